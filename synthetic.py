"""Demo data: render a small dataset in the competition layout, or build one from real faces.

    python synthetic.py --out demo_data                         # drawn people (default 150)
    python synthetic.py --out big --people 1000 --seed 1
    python synthetic.py --faces ../shared/realdata/utkface_subset --out realface_data
    python synthetic.py --layout voc --out mask_voc --people 40  # a mask set: VOC, yolo or folders

Writes <out>/train/images/<id>_<gender>_<race>_<age>/{mask1..5,incorrect_mask,normal}.jpg,
<out>/train/train.csv, <out>/eval/images/<hash>.jpg, <out>/eval/info.csv (ans=0) and the ground
truth <out>/eval/gt.csv (ImageID, ans). Deterministic for a seed. The split is by person.
--layout voc|yolo writes a public mask set's layout instead (street-like photos of three faces with their boxes,
mask state only), --layout folders its face crops in with_mask/, incorrect_mask/, without_mask/: each drawn person
wears the mask right, wrong (nose or chin out) and not at all.

Drawn people: identity (face shape, skin, hair) is shared by a person's 7 photos; gender and age are
carried by noisy cues (hair length and colour, face width, lips, brows, wrinkles, grey hair) that
overlap near the age bounds; masks come in several shapes and colours, incorrect masks leave the
nose or the mouth and nose exposed; pose, scale, background, light and JPEG quality vary per photo.
"""
from __future__ import annotations

from masktk.cli import cli, fraction, make_parser, positive
from masktk.data.drawn import drawn_people
from masktk.data.write_layout import check_replaceable, write_dataset
from masktk.data.write_mask_set import MASK_SET_LAYOUTS, write_mask_set


@cli
def main(argv):
    ap = make_parser(__doc__)
    ap.add_argument("--output_dir", "--out", dest="output_dir", default="demo_data", help="output root (replaced if synthetic.py made it; any other "
                    "existing non-empty folder is refused)")
    ap.add_argument("--people", type=positive(int, 1, inclusive=True), default=150, help="number of drawn people")
    ap.add_argument("--eval_ratio", type=fraction, default=0.2, help="share of people in eval/")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--faces", default=None, help="folder of real face photos (UTKFace names or a "
                    "labels CSV): build the dataset from them instead of drawing people")
    ap.add_argument("--faces_csv", default=None, help="CSV with path, age, gender (0 male, 1 female)")
    ap.add_argument("--limit", type=positive(int, 1, inclusive=True), default=None,
                    help="with --faces: use at most N photos")
    ap.add_argument("--masks", default="fitted", help="with --faces: how masks are drawn: fitted (follows the face, "
                    "lit like the photo) or flat (the first builder; docs/results.md compares them)")
    ap.add_argument("--scene", choices=("photo", "person"), default="photo", help="with --faces: background and "
                    "shirt drawn per photo, or shared by a person's photos as in the competition's (inference.py "
                    "--group_people can then find a person's photos)")
    ap.add_argument("--layout", choices=("competition",) + MASK_SET_LAYOUTS, default="competition",
                    help="competition (train/ and eval/ with gender and age), or a mask set: voc, yolo, folders")
    args = ap.parse_args(argv)
    check_replaceable(args.output_dir)  # before any drawing
    if args.layout != "competition":
        from masktk.data.drawn import draw_mask_set_person
        faces = [f for person in drawn_people(args.people, args.seed, draw_mask_set_person) for f in person]
        photos, n = write_mask_set(faces, args.output_dir, args.layout)
        print(f"wrote {args.output_dir}: a {args.layout} mask set of {n} faces in {photos} photos")
        return
    if args.faces:
        from masktk.data.composed import real_people
        people = real_people(args.faces, args.faces_csv, args.seed, args.limit, args.masks, args.scene)
    else:
        people = drawn_people(args.people, args.seed)
    n_train, n_eval = write_dataset(people, args.output_dir, args.eval_ratio, args.seed)
    print(f"wrote {args.output_dir}: {n_train} train people ({n_train * 7} photos), {n_eval} eval people "
          f"({n_eval * 7} photos); ground truth in {args.output_dir}/eval/gt.csv")


if __name__ == "__main__":
    main()
