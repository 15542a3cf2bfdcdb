"""List the networks train.py can use (--model NAME: any timm name) and check one builds with its weights.

    python model.py --list                 # every model name timm knows
    python model.py --check efficientnet_lite0   # build it, load the offline ImageNet weights

A model's output is the concatenated logits of its heads: tasks ('label',) -> 18 logits;
('mask', 'gender', 'age') -> 3 + 2 + 3 logits from one backbone; ('age',) -> 3 logits. The networks are
built in masktk/models.py; checkpoints are saved and loaded in masktk/checkpoint.py.
"""
from __future__ import annotations

from masktk.cli import cli, make_parser
from masktk.models import create_model, offline_weights


@cli
def main(argv):
    ap = make_parser(__doc__)
    ap.add_argument("--list", action="store_true", help="print every timm model name")
    ap.add_argument("--check", default=None, help="build a model with its pretrained weights")
    args = ap.parse_args(argv)
    if args.list:
        import timm
        print("\n".join(timm.list_models()))
    if args.check:
        m = create_model(args.check, pretrained=True)
        print(f"{args.check}: {sum(p.numel() for p in m.parameters()) / 1e6:.2f}M parameters, "
              f"pretrained from {offline_weights(args.check) or 'the timm hub'}")


if __name__ == "__main__":
    main()
