"""One error family: usage errors (exit 2) and run errors (exit 1)."""


class VaeError(Exception):
    exit_code = 1


class UsageError(VaeError):
    exit_code = 2


class RunError(VaeError):
    exit_code = 1
