"""python -m golf: the list of golf's commands (each is its own module: python -m golf.<command> --help)."""

from __future__ import annotations

import sys

# One line per command, from its module's docstring. Kept here rather than read from the modules: importing
# them loads torch, seconds for a help text.
COMMANDS = {
    "golf.train": "fit tiers 0+1 by counting, then train the tier-2 transformer, in one wall-clock budget",
    "golf.config": "golf.train's resolved settings as one table (value, source) and the parameters per component",
    "golf.eval": "the sliding-window BPB of a model.golf, from the artifact alone; --audit: the validity checks",
    "golf.artifact": "verify a model.golf: its tensors, schemes, checksums and size against the cap (--check)",
    "golf.submit": "a records-style submission folder (train_gpt.py, README, logs) from finished runs",
    "golf.experiment": "arms x seeds of golf.train in one command, with p-values, confidence intervals, curves",
    "golf.datatools": "challenge data: prepare (documents to shards), download (the cached shards), stats",
    "golf.info": "what this golf build is and which ops run where",
}

HELP = "\n".join([
    "golf: a Tiered Residual Predictor for OpenAI's Parameter Golf challenge.",
    "",
    "usage: python -m golf.<command> [--help] ...",
    "",
    "commands:",
    *(f"  {name:<16} {line}" for name, line in COMMANDS.items()),
    "",
    "exit codes: 0 ok; 2 bad input, setting or budget (one `error:` line on stderr); 3 a check that fails",
    "(golf.eval --audit, golf.artifact --check); 128 + N golf.train stopped by signal N (after saving);",
    "1 a run of golf.experiment that failed, else an unexpected failure (a bug: it prints a traceback).",
])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(HELP)
        return 0
    print(HELP, file=sys.stderr)
    hint = f"python -m golf.{argv[0]}" if f"golf.{argv[0]}" in COMMANDS else "python -m golf.<command>"
    print(f"error: python -m golf: unknown argument {argv[0]!r} (run a command as {hint})", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
