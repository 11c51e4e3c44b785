"""Where a preset's model and tokenizer will come from, found without loading them (for --dry-run): built in,
a local directory, the Hugging Face cache, or the hub."""

from __future__ import annotations

from pathlib import Path

from tui_tuner.format import first_line
from tui_tuner.preset import BUILTIN_MODEL
from tui_tuner.training.model import ModelError

# Any one of these is a tokenizer AutoTokenizer can load (fast, sentencepiece, or BPE vocab files).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def model_source(name: str, timeout: float = 3.0) -> str:
    """A few words on where `name` (model and tokenizer) resolves; ModelError, one line, when it resolves
    nowhere: a real run would otherwise fail only once its first trial loads, a minute in."""
    if name == BUILTIN_MODEL:
        return "built in"
    path = Path(name).expanduser()
    if path.exists():  # from_pretrained reads a local path first, as here
        return _local(name, path)
    from huggingface_hub import constants, try_to_load_from_cache

    cache = constants.HF_HUB_CACHE
    if isinstance(try_to_load_from_cache(name, "config.json"), str) and any(
            isinstance(try_to_load_from_cache(name, f), str) for f in TOKENIZER_FILES):
        return f"in the HF cache ({cache})"
    if constants.HF_HUB_OFFLINE:
        raise ModelError(f"model {name}: not in the HF cache ({cache}) and HF_HUB_OFFLINE is set: download it "
                         "first, or unset HF_HUB_OFFLINE")
    return _on_hub(name, cache, timeout)


def _local(name: str, path: Path) -> str:
    if not (path / "config.json").is_file():
        raise ModelError(f"model {name}: {path} has no config.json (not a model directory)")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise ModelError(f"model {name}: {path} has no tokenizer ({', '.join(TOKENIZER_FILES)})")
    return f"local directory {path}"


def _on_hub(name: str, cache: str, timeout: float) -> str:
    """A HEAD of the model's config.json on the hub: short, so a box without internet says so in seconds."""
    import httpx
    from huggingface_hub import constants, get_token, hf_hub_url

    token = get_token()
    try:
        r = httpx.head(hf_hub_url(name, "config.json"), timeout=timeout, follow_redirects=True,
                       headers={"authorization": f"Bearer {token}"} if token else {})
    except httpx.HTTPError as e:
        raise ModelError(f"model {name}: not in the HF cache ({cache}) and the hub ({constants.ENDPOINT}) is "
                         f"unreachable: {type(e).__name__}: {first_line(e)}") from None
    if r.status_code in (401, 403):
        raise ModelError(f"model {name}: the hub refuses it without a token (HTTP {r.status_code}; gated or "
                         "private): `huggingface-cli login` or set HF_TOKEN")
    if r.status_code == 404:
        raise ModelError(f"model {name}: no such model on the hub ({constants.ENDPOINT}, HTTP 404)")
    if r.status_code >= 400:
        raise ModelError(f"model {name}: the hub ({constants.ENDPOINT}) answered HTTP {r.status_code}")
    return f"on the hub ({constants.ENDPOINT}; downloaded when the sweep starts)"
