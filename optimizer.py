"""The optimizers (--optimizer NAME) and learning-rate schedules (--scheduler NAME) train.py offers, one line
each; the defaults are marked.

    python optimizer.py

They are built in masktk/train/optimizers.py (timm's and torch's factories).
"""
from __future__ import annotations

from dataclasses import fields

from masktk.cli import cli, make_parser, name_table


@cli
def main(argv):
    make_parser(__doc__).parse_args(argv)
    from masktk.train.optimizers import ABOUT, SCHEDULE_ABOUT
    from masktk.train.settings import RunSettings
    defaults = {f.name: f.default for f in fields(RunSettings)}
    print("optimizers (--optimizer):", *name_table(ABOUT, defaults["optimizer"], "  "),
          "schedules (--scheduler):", *name_table(SCHEDULE_ABOUT, defaults["scheduler"], "  "), sep="\n")


if __name__ == "__main__":
    main()
