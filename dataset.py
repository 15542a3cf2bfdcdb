"""The label table of a training set (one row per photo) and the eval set's reader.

Write the per-image label table of a training set (default: the demo dataset):

    python dataset.py --train_dir demo_data/train              # -> demo_data/train/perfect_train.csv
    SM_CHANNEL_TRAIN=/data/train python dataset.py --age_bounds 29 58 --output table.csv

Layout read (the competition's): <train_dir>/train.csv (id, gender, race, age, path) and
<train_dir>/images/<path>/{mask1..mask5,incorrect_mask,normal}.{jpg,jpeg,png}.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from masktk.cli import Rising, cli, demo_note, env_default, fraction, load_dotenv_once, make_parser, positive
from masktk.data.table import DEFAULT_FIXES, TABLE_COLUMNS, build_table
from masktk.errors import Log, UserError
from masktk.files import write_csv_atomic
from masktk.labels import OFFICIAL_AGE_BOUNDS
from masktk.outputs import check_outputs, record_written


@cli
def main(argv):
    load_dotenv_once()
    ap = make_parser(__doc__)
    ap.add_argument("--train_dir", "--data_dir", dest="train_dir", default=env_default("SM_CHANNEL_TRAIN", "demo_data/train"),
                    help="training dir holding train.csv and images/ (env SM_CHANNEL_TRAIN)")
    ap.add_argument("--output", "--out", dest="output", default=None,
                    help="output CSV (unset: <train_dir>/perfect_train.csv)")
    ap.add_argument("--age_bounds", type=positive(int, 1, inclusive=True), nargs=2, action=Rising,
                    default=list(OFFICIAL_AGE_BOUNDS), metavar=("LOW", "HIGH"), help="first ages of the middle and old class")
    ap.add_argument("--fixes", default=str(DEFAULT_FIXES), help="label fixes CSV (id,field,value)")
    ap.add_argument("--max_bad", type=fraction, default=0.01, help="max fraction of unreadable images")
    args = ap.parse_args(argv)
    demo_note(args.train_dir, "demo_data/train", "SM_CHANNEL_TRAIN", ("--train_dir", "--data_dir"), argv)
    data_dir = Path(args.train_dir)
    if not data_dir.is_dir():
        raise UserError(f"{data_dir} is not a directory: pass --train_dir or set SM_CHANNEL_TRAIN "
                        "(run 'python synthetic.py' to make the demo dataset)")
    out = Path(args.output) if args.output else data_dir / "perfect_train.csv"
    check_outputs(out.parent, [out.name], "--output", inputs=[data_dir / "train.csv", args.fixes], say_replaced=False)
    log = Log()
    table = build_table(data_dir, tuple(args.age_bounds), args.fixes, args.max_bad, log)
    log.summary()
    record_written(out.parent, [out.name], "dataset.py")
    write_csv_atomic(table[TABLE_COLUMNS], out)
    n_people = table["people_path"].nunique()
    print(f"wrote {out}: {len(table)} images of {n_people} people; labels per class: "
          f"{np.bincount(table['label'], minlength=18).tolist()}")


if __name__ == "__main__":
    main()
