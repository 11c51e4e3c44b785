"""Preset schema (pydantic), TOML loading, `--set` overrides and one-line validation errors."""

from __future__ import annotations

import copy
import difflib
import math
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import optuna.distributions as od
import tomli_w
from pydantic import AllowInfNan, BaseModel, Field, ValidationError, field_validator, model_validator

from tui_tuner.format import utf8_problem
from tui_tuner.params import PARAM_NAMES, STRICT_NUMBERS, TrialParams, error_message, fork_fixed_params

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"
BUILTIN_MODEL = "builtin:tiny-llama"
BUILTIN_DATA = "builtin:progressions"
BUILTIN_MARKOV = "builtin:markov"  # the low-noise task of benchmarks/search_efficiency.py
BUILTIN_DATASETS = frozenset({BUILTIN_DATA, BUILTIN_MARKOV})
# Params PBT never explores besides the shape ones: they set how long the run is, which data and init it sees, or
# whose state a clone could not take over (the optimizer's, the model's).
PBT_FIXED = frozenset({"max_steps", "epochs", "seed", "eval_interval", "eval_batches", "optimizer", "model_name"})


class PresetError(ValueError):
    """A preset or override that cannot be used; str() is the one-line (per problem) message."""


class _Strict(BaseModel):
    model_config = STRICT_NUMBERS


def _file_name(value: str | None) -> str | None:
    """The run dir defaults to runs/<name>: a separator or '..' in the name would put it somewhere else."""
    if value is not None and (value in ("", ".", "..") or any(c in value for c in "/\\\0")):
        raise ValueError("must be a plain file name, without '/', '\\' or '..' (it names the run directory "
                         "runs/<name>)")
    return value


class ModelSection(_Strict):
    name: str = Field(description="hub id, local path, or builtin:tiny-llama")
    method: Literal["lora", "adalora", "full"] = "lora"
    trust_remote_code: bool = False


class DataSection(_Strict):
    train: str = Field(description="JSONL path, builtin:progressions or builtin:markov")
    eval: str | None = None
    format: Literal["auto", "text", "prompt_completion", "chat"] = "auto"
    eval_fraction: float = Field(0.1, gt=0, lt=1)
    max_length: int = Field(128, ge=8)
    split_seed: int = 0


class FloatDist(_Strict):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = None

    @model_validator(mode="after")
    def _range(self) -> FloatDist:
        _check_range(self.low, self.high, self.log)
        _optuna_accepts(lambda: od.FloatDistribution(self.low, self.high, log=self.log, step=self.step))
        return self


class IntDist(_Strict):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = 1

    @model_validator(mode="after")
    def _range(self) -> IntDist:
        _check_range(self.low, self.high, self.log)
        _optuna_accepts(lambda: od.IntDistribution(self.low, self.high, log=self.log, step=self.step))
        return self


def _check_range(low: float, high: float, log: bool) -> None:
    """The common mistakes, in our words; Optuna's own checks below catch the rest."""
    if low > high:
        raise ValueError(f"low ({low}) > high ({high})")
    if log and low <= 0:
        raise ValueError("log scale needs low > 0")


def _optuna_accepts(build: Callable[[], od.BaseDistribution]) -> None:
    """Build the distribution Optuna will be asked for, so a range it rejects fails at load time; otherwise
    every trial's suggest_* raises and each one is told FAIL."""
    try:
        build()
    except ValueError as e:
        raise ValueError(str(e).replace("`", "'")) from None


class CategoricalDist(_Strict):
    type: Literal["categorical"]
    # inf/NaN pass here so that the check against the param's own rules names the param (the float branch
    # refusing them would be one error line per branch of this union).
    choices: list[str | int | Annotated[float, AllowInfNan(True)] | bool | None] = Field(min_length=1)

    @model_validator(mode="after")
    def _optuna(self) -> CategoricalDist:
        _optuna_accepts(lambda: od.CategoricalDistribution(self.choices))
        return self


Distribution = Annotated[FloatDist | IntDist | CategoricalDist, Field(discriminator="type")]

# Params in a cross-field rule of TrialParams (warmup_steps <= max_steps), and which end of a searched range
# is the most lenient for the others.
_LENIENT: dict[str, Callable[[list[int]], int]] = {"max_steps": max, "warmup_steps": min}


def _values(dist: FloatDist | IntDist | CategoricalDist) -> list[Any]:
    """The values that stand for a searched range in load-time checks: its choices, or both bounds."""
    return list(dist.choices) if isinstance(dist, CategoricalDist) else [dist.low, dist.high]


def _extreme(dist: FloatDist | IntDist | CategoricalDist, pick: Callable[[list[int]], int]) -> int | None:
    """pick() of a searched range's integer values (None when it has none: a wrong type, reported elsewhere)."""
    ints = [v for v in _values(dist) if isinstance(v, int) and not isinstance(v, bool)]
    return pick(ints) if ints else None


class StudySection(_Strict):
    name: str | None = None
    _name = field_validator("name")(_file_name)
    direction: Literal["minimize"] = "minimize"
    sampler: Literal["tpe", "random", "grid", "gp", "cmaes"] = "tpe"
    sampler_seed: int | None = 0
    sampler_startup_trials: int | None = Field(
        None, ge=1, description="finished trials tpe / gp / cmaes sample at random before they model the results; "
        "None: a quarter of n_trials, from 2 to 10 (Optuna's own default, 10, leaves a budget of 8 all random)")
    pruner: Literal["none", "median", "successive_halving", "hyperband"] = "median"
    pruner_warmup_steps: int = Field(0, ge=0)
    pruner_startup_trials: int = Field(2, ge=0)
    min_resource: int | None = Field(None, ge=1)
    reduction_factor: int = Field(3, ge=2)
    n_trials: int = Field(8, ge=1)
    timeout: float | None = Field(None, gt=0)
    concurrency: int = Field(2, ge=1)
    paused_frees_slot: bool = False
    prune_user_trials: bool = Field(False, description="let the pruner stop trials you enqueued or forked")
    retry_oom: bool = Field(True, description="re-queue a CUDA-OOM trial with half the micro-batch, 2x accumulation")
    stale_after: float = Field(60.0, ge=3, description="a shared --storage: seconds without a heartbeat after which "
                               "another worker's running trials are marked interrupted")
    strategy: Literal["optuna", "pbt", "promote"] = Field(
        "optuna", description="optuna: sampler + pruner; pbt: population-based training ([pbt]; the pruner is not "
        "used); promote: train [promote] configs to t1 steps, continue the best top_k to max_steps")

    @model_validator(mode="after")
    def _startup_has_a_model(self) -> StudySection:
        if self.sampler_startup_trials is not None and self.sampler in ("random", "grid"):
            raise ValueError(f"sampler_startup_trials: the {self.sampler} sampler has no model to start; it applies "
                             "to tpe, gp and cmaes")
        return self

    @property
    def startup_trials(self) -> int:
        """Random trials before the sampler's model guides: the setting, or a quarter of the budget (2-10)."""
        if self.sampler_startup_trials is not None:
            return self.sampler_startup_trials
        return max(2, min(10, self.n_trials // 4))


class PbtSection(_Strict):
    """Population-based training (Jaderberg et al. 2017), as Ray Tune's PBT does it: every `interval` steps a
    member in the bottom `quantile` of those that reached that step clones a top member (weights and optimizer
    state, through a fork) and explores new values of the params in `explore`."""

    population: int | None = Field(None, ge=2, description="members started by the sampler; None: study.n_trials")
    interval: int = Field(50, ge=1, description="steps between exploit/explore decisions")
    quantile: float = Field(0.25, gt=0, le=0.5, description="bottom share that clones the top share")
    resample_probability: float = Field(0.25, ge=0, le=1, description="chance a param is drawn again from its "
                                        "search range instead of perturbed")
    perturb: list[float] = Field([0.8, 1.2], min_length=1, description="factors a float or int param is "
                                 "multiplied by (a categorical moves to a neighbouring choice)")
    explore: list[str] | None = Field(None, description="params to explore; None: every searched param a fork "
                                      "may change (not shapes, the optimizer, max_steps, seed)")
    synch: bool = Field(True, description="a member at a boundary waits for the running members behind it, so "
                        "each decision ranks the whole population (Ray Tune's synch); false: rank those there")
    seed: int = 0

    @field_validator("perturb")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if any(f <= 0 for f in v):
            raise ValueError("perturb factors must be > 0")
        return v


class PromoteSection(_Strict):
    """Multi-fidelity promotion: `configs` sampler trials train to `t1` steps (the sampler sees each at its t1
    eval), then the `top_k` best by that eval continue from their own t1 checkpoints to max_steps."""

    configs: int | None = Field(None, ge=2, description="configurations trained to t1; None: study.n_trials")
    t1: int = Field(description="steps of the first rung (e.g. 20% of max_steps)", ge=1)
    top_k: int = Field(ge=1, description="configurations continued to max_steps")


class CheckpointSection(_Strict):
    interval: int | None = Field(None, ge=1, description="steps between periodic checkpoints; None: none")
    keep: int = Field(2, ge=1, description="periodic/final/stop/on-demand checkpoints kept per trial")
    keep_best: bool = Field(True, description="also checkpoint each new best eval, and keep the best")


class DeviceSection(_Strict):
    type: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    threads_per_trial: int = Field(1, ge=1)
    gpus: Literal["all"] | list[int] | None = Field(
        None, description="GPUs trials are placed on: 'all' (the default when CUDA is present) or torch indices "
        "(after CUDA_VISIBLE_DEVICES); an error on a machine without CUDA")
    trials_per_gpu: int | None = Field(None, ge=1, description="at most this many trials per GPU; None: as many "
                                       "as fit in its free memory")

    @model_validator(mode="after")
    def _gpus_need_cuda(self) -> DeviceSection:
        if self.type == "cpu" and self.gpus is not None:
            raise ValueError("gpus is set but device.type = 'cpu': remove device.gpus or use 'auto' or 'cuda'")
        if isinstance(self.gpus, list) and (not self.gpus or len(set(self.gpus)) != len(self.gpus)
                                            or min(self.gpus) < 0):
            raise ValueError("gpus must list each GPU index (0 or more) once, or be 'all'")
        return self


class AlertsSection(_Strict):
    bell: bool = Field(True, description="ring the terminal bell with each alert (tmux marks the window); "
                                         "off: a notification only")
    sweep_finished: bool = Field(True, description="alert when the sweep has spent its budget (or halted)")
    trial_failed: bool = Field(True, description="alert when a trial fails")
    new_best: bool = Field(True, description="alert when a completed trial beats the best eval loss so far")


class Preset(_Strict):
    """A whole sweep: model, data, fixed params, search space, study, checkpoints, device, alerts."""

    name: str
    description: str = ""
    model: ModelSection
    data: DataSection
    params: TrialParams
    search: dict[str, Distribution] = Field(default_factory=dict)
    study: StudySection = Field(default_factory=StudySection)
    checkpoints: CheckpointSection = Field(default_factory=CheckpointSection)
    device: DeviceSection = Field(default_factory=DeviceSection)
    alerts: AlertsSection = Field(default_factory=AlertsSection)
    pbt: PbtSection = Field(default_factory=PbtSection)
    promote: PromoteSection | None = None

    _name = field_validator("name")(_file_name)

    @model_validator(mode="after")
    def _strategy(self) -> Preset:
        """Strategy settings that cannot work are load-time errors, not a sweep that quietly does something else."""
        s = self.study
        if s.strategy == "pbt":
            pop = self.pbt.population
            if pop is not None and pop != s.n_trials:
                raise ValueError(f"pbt.population: {pop} but study.n_trials is {s.n_trials}: PBT's sampler "
                                 "budget is its population; set one of them")
            if s.n_trials < 2:
                raise ValueError("study.n_trials: PBT needs a population of 2 or more")
            if not self.pbt_explored():
                raise ValueError("pbt.explore: nothing to explore: search at least one param a fork may change "
                                 "(learning_rate, weight_decay, ...)")
            for name in self.pbt.explore or []:
                if name not in self.search:
                    raise ValueError(f"pbt.explore: {name} is not searched: PBT explores within [search.{name}]")
                if name in PBT_FIXED or name in fork_fixed_params(self.model.method):
                    raise ValueError(f"pbt.explore: {name} cannot change mid-run (a fork may not change it)")
        if s.strategy == "promote":
            pr = self.promote
            if pr is None:
                raise ValueError("promote: study.strategy = 'promote' needs a [promote] section with t1 and top_k")
            configs = pr.configs or s.n_trials
            if pr.configs is not None and pr.configs != s.n_trials:
                raise ValueError(f"promote.configs: {pr.configs} but study.n_trials is {s.n_trials}: set one of them")
            if pr.top_k >= configs:
                raise ValueError(f"promote.top_k: {pr.top_k} is not fewer than the {configs} configurations")
            steps = self.params.max_steps
            if steps is None or pr.t1 >= steps or ("max_steps" in self.search):
                raise ValueError(f"promote.t1: must be below a fixed params.max_steps (got t1 = {pr.t1}, "
                                 f"max_steps = {steps}{', searched' if 'max_steps' in self.search else ''})")
        return self

    def pbt_explored(self) -> list[str]:
        """The params PBT perturbs: pbt.explore, or every searched param a fork may change mid-run."""
        if self.pbt.explore is not None:
            return list(self.pbt.explore)
        fixed = PBT_FIXED | fork_fixed_params(self.model.method).keys()
        return [k for k in self.search if k not in fixed]

    @property
    def strategy_label(self) -> str:
        """What decides which trials stop early, for headers: the pruner, or the strategy that replaces it."""
        s = self.study
        return {"pbt": "pbt", "promote": f"{s.pruner}+promote"}.get(s.strategy, s.pruner)

    @model_validator(mode="after")
    def _search_names(self) -> Preset:
        for key in self.search:
            if key not in PARAM_NAMES:
                raise ValueError(f"search.{key}: unknown hyperparameter{_did_you_mean(key, PARAM_NAMES)}")
        # A searched partner of a cross-field rule (warmup_steps <= max_steps) takes its most lenient searched
        # value, not the fixed one the search overrides: a bound fails only when no partner value fits it.
        lenient = self.params.model_dump()
        for key, pick in _LENIENT.items():
            if key in self.search and (v := _extreme(self.search[key], pick)) is not None:
                lenient[key] = v
        for key, dist in self.search.items():
            for v in _values(dist):
                try:
                    TrialParams.model_validate({**lenient, key: v})
                except ValidationError as e:
                    msg = error_message(e.errors()[0])
                    raise ValueError(f"search.{key}: value {v!r} is not a valid {key}: {msg}") from None
        warmup, steps = self.search.get("warmup_steps"), self.search.get("max_steps")
        most, fewest = (_extreme(warmup, max), _extreme(steps, min)) if warmup and steps else (None, None)
        if most is not None and fewest is not None and most > fewest:
            # Sampled independently, some pairs would have warmup_steps > max_steps: those trials would FAIL.
            raise ValueError(f"search.warmup_steps: goes up to {most} steps but search.max_steps goes down to "
                             f"{fewest}: a trial's warmup would be longer than its run")
        return self

    @model_validator(mode="after")
    def _grid(self) -> Preset:
        """The grid sampler is built in Sweep.start(), after the run dir is written: check its space now."""
        if self.study.sampler == "grid":
            self.grid_space()  # its ValueError names the search field
        return self

    def grid_space(self) -> dict[str, list[Any]]:
        """Every value the grid sampler tries, per searched param; float ranges need a step."""
        grid: dict[str, list[Any]] = {}
        for name, d in self.search.items():
            if isinstance(d, CategoricalDist):
                grid[name] = list(d.choices)
            elif isinstance(d, IntDist):
                grid[name] = list(range(d.low, d.high + 1, d.step))
            elif d.step is not None:
                n = math.floor((d.high - d.low) / d.step + 1e-9)
                grid[name] = [d.low + i * d.step for i in range(n + 1)]
            else:
                raise ValueError(f"search.{name}: the grid sampler needs 'step' on float ranges")
        return grid

    @property
    def study_name(self) -> str:
        return self.study.name or self.name

    def param_values(self, name: str) -> list[Any]:
        """The values a trial can get for param `name`: its searched choices (or bounds), else its fixed value."""
        return _values(self.search[name]) if name in self.search else [getattr(self.params, name)]

    def model_names(self) -> list[str]:
        """Every model a trial of this preset can train: model.name (whose tokenizer tokenizes the data) and
        the params.model_name fixed or searched."""
        return list(dict.fromkeys([self.model.name, *(v for v in self.param_values("model_name") if v)]))

    # -- loading -------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | None = None, *, check_paths: bool = True) -> Preset:
        """Read a TOML preset, apply `key=value` overrides, validate; raise PresetError naming file+field.
        `check_paths=False` skips the model/data existence check (export reads params, never the data)."""
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_bytes().decode("utf-8"))
        except FileNotFoundError:
            raise PresetError(f"{path}: preset file not found") from None
        except UnicodeDecodeError as e:
            raise PresetError(utf8_problem(e, str(path))) from None
        except tomllib.TOMLDecodeError as e:
            raise PresetError(f"{path}: malformed TOML: {e}") from None
        _anchor_paths(raw, path.parent)
        return cls.from_dict(raw, source=str(path), overrides=overrides, check_paths=check_paths)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "<preset>", overrides: list[str] | None = None, *,
                  check_paths: bool = True) -> Preset:
        raw = apply_overrides(raw, overrides or [], source)
        # Paths from --set (and from dicts built in code) mean the shell's directory; made absolute here because
        # the resolved preset is saved in the run dir, where a relative path would be read against the run dir.
        _anchor_paths(raw, Path.cwd(), existing_models=True)
        try:
            preset = cls.model_validate(raw)
        except ValidationError as e:
            raise PresetError("\n".join(_format_errors(e, source, overrides or []))) from None
        if check_paths:
            preset.check_paths(source, {o.partition("=")[0].strip() for o in overrides or []})
        return preset

    def check_paths(self, source: str, set_keys: set[str] | frozenset[str] = frozenset()) -> None:
        """Missing local model dirs or data files are errors now, not an hour into the sweep; a path given with
        --set is named as such."""

        def where(field: str) -> str:
            return f"--set {field}" if field in set_keys else f"{source}: {field}"

        problems = []
        models = [("model.name", self.model.name), ("params.model_name", self.params.model_name)]
        if "model_name" in self.search:
            models += [("search.model_name", v) for v in _values(self.search["model_name"])]
        for fld, name in models:
            if isinstance(name, str) and name != BUILTIN_MODEL and _looks_local(name) and not Path(name).exists():
                problems.append(f"{where(fld)}: path does not exist: {name}")
        for fld in ("train", "eval"):
            value = getattr(self.data, fld)
            if value and value not in BUILTIN_DATASETS and not Path(value).is_file():
                problems.append(f"{where('data.' + fld)}: file does not exist: {value}")
        if problems:
            raise PresetError("\n".join(problems))

    def to_toml(self) -> str:
        return dump_toml(self.model_dump(mode="json", exclude_none=True))


def _anchor_paths(raw: dict[str, Any], base: Path, existing_models: bool = False) -> None:
    """Make relative data paths and local model paths absolute against `base`. Preset.load anchors a file's own
    paths to its directory (as docker-compose does), so a bundled preset works from any directory; from_dict
    then anchors what is left (`--set` values) to the working directory. A model name is a local path when it
    starts with '.' or '~', or (`existing_models`) when it names an existing directory, as from_pretrained would
    read it; otherwise it stays a hub id."""
    data = raw.get("data")
    if isinstance(data, dict):
        for key in ("train", "eval"):
            value = data.get(key)
            if isinstance(value, str) and value and not value.startswith("builtin:"):
                data[key] = _absolute(value, base)
    # The model names: model.name, and params.model_name fixed or searched (choices of one family).
    model, params, search = (raw.get(k) for k in ("model", "params", "search"))
    if isinstance(model, dict) and "name" in model:
        model["name"] = _anchor_model(model.get("name"), base, existing_models)
    if isinstance(params, dict) and "model_name" in params:
        params["model_name"] = _anchor_model(params["model_name"], base, existing_models)
    choices = search.get("model_name", {}).get("choices") if isinstance(search, dict) and isinstance(
        search.get("model_name"), dict) else None
    if isinstance(choices, list):
        search["model_name"]["choices"] = [_anchor_model(c, base, existing_models) for c in choices]


def _anchor_model(name: Any, base: Path, existing_models: bool) -> Any:
    """A model name made absolute when it is a local path; a hub id, builtin: or a wrong type as it is."""
    if not isinstance(name, str) or not name or name.startswith("builtin:"):
        return name
    local = name.startswith((".", "~")) or (existing_models and (base / name).exists())
    return _absolute(name, base) if local else name


def _absolute(value: str, base: Path) -> str:
    try:
        path = Path(value).expanduser()
    except RuntimeError:  # ~nosuchuser: keep it as written; the existence check names it
        path = Path(value)
    return str(path if path.is_absolute() else (base / path).resolve())


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") != 1 or Path(name).exists()


def _did_you_mean(key: str, options: frozenset[str] | list[str]) -> str:
    close = difflib.get_close_matches(key, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _format_errors(err: ValidationError, source: str, overrides: list[str]) -> list[str]:
    """One line per problem; a problem in a field set with --set names the --set, not the file."""
    set_keys = [o.partition("=")[0].strip() for o in overrides]
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"] if not str(p).startswith(("function-after", "tagged-union"))]
        # Drop pydantic's union branch tags such as 'float' in search.lr.float.low.
        if len(loc) >= 3 and loc[0] == "search" and loc[2] in ("float", "int", "categorical"):
            loc.pop(2)
        named = re.fullmatch(r"([A-Za-z_][\w.-]*): (.+)", error_message(e)) if not loc else None
        if named:  # a whole-preset check (search names, grid space) names its field in the message
            loc = named.group(1).split(".")
        field = ".".join(loc) or "(top level)"
        where = _blame(field, set_keys) or f"{source}: {field}"
        got = e.get("input")
        if e["type"] == "union_tag_not_found":
            msg = 'needs type = "float", "int" or "categorical"'
        elif e["type"] == "union_tag_invalid" and isinstance(got, dict):
            msg = f"type {got.get('type')!r} is not float, int or categorical"
        elif e["type"] == "extra_forbidden":
            msg = f"unknown key{_did_you_mean(loc[-1], _fields_at(loc[:-1]))}"
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif named:
            msg = named.group(2)
        else:
            msg = error_message(e) + (f" (got {got!r})" if not isinstance(got, dict) else "")
        lines.append(f"{where}: {msg}")
    return lines


def _blame(field: str, set_keys: list[str]) -> str | None:
    """The --set a problem in `field` comes from, if one does. Setting a search range's `type` changes which
    fields that range needs, so it is to blame for any of them (`search.r.type=int` with no low/high)."""
    for k in set_keys:
        if k == field or k.startswith(field + ".") or field.startswith(k + "."):
            return f"--set {field}"
        table, _, last = k.rpartition(".")
        if last == "type" and field.startswith(table + "."):
            return f"--set {k}: {field}"
    return None


def _fields_at(loc: list[str]) -> list[str]:
    model: Any = Preset
    for part in loc:
        fld = getattr(model, "model_fields", {}).get(part)
        if fld is None:
            return []
        model = fld.annotation
    return list(getattr(model, "model_fields", {}))


# -- overrides ---------------------------------------------------------------------------------
def parse_value(text: str) -> Any:
    """A `--set` value is read as a TOML value when it parses as one, else as a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str], source: str) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PresetError(f"--set {item!r}: expected key=value (e.g. params.learning_rate=3e-4)")
        parts = key.strip().split(".")
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise PresetError(f"--set {item!r}: {part} is not a table")
            node = child
        node[parts[-1]] = parse_value(value.strip())
    return raw


def dump_toml(data: dict[str, Any]) -> str:
    """TOML text of a preset (a resolved one for the run dir and `presets show`, or a raw dict in tests)."""
    return tomli_w.dumps(data)


def resolve_preset_path(name_or_path: str) -> Path:
    """A path to a TOML file, or the name of a file in ./presets or the bundled presets dir."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    stem = p.name.removesuffix(".toml")
    for d in (Path.cwd() / "presets", PRESETS_DIR):
        cand = d / f"{stem}.toml"
        if cand.is_file():
            return cand
    known = sorted(f.stem for f in PRESETS_DIR.glob("*.toml"))
    raise PresetError(f"preset not found: {name_or_path}{_did_you_mean(stem, known)} (bundled: {', '.join(known)})")
