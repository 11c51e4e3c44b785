"""Exit codes of the `tui-tuner` command, in one leaf module every client imports."""

EXIT_OK = 0  # the budget is spent
EXIT_HALTED = 1  # the sweep halted (its sampler broke) before the budget was spent
EXIT_BAD_INPUT = 2  # a bad preset, --set, path or command: one line on stderr, nothing written
EXIT_NOT_RUNNING = 3  # ctl / attach: no engine answers at that run dir
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a process ended by Ctrl-C (SIGTERM 143, SIGHUP 129)
