"""The original scripts' command lines, bugs found by reading, bad input found by trying it, and the
parts of the loop that had no test: each test here fails without the fix it names."""
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import REPO, TINY, assert_clean_error, run

BASE = ["--model", "test_efficientnet", "--pretrained", "False", "--batch_size", "16", "--progress", "False",
        "--epochs", "1"]


# --- 1. users arriving with the original command lines ---------------------------------------------
def test_original_train_command_line_with_the_crops_folder_as_channel(tiny_root, tmp_path):
    """SM_CHANNEL_TRAIN at images/ (the original pointed it at the crops), and the original's flag names."""
    env = {"SM_CHANNEL_TRAIN": str(tiny_root / "train" / "images"), "SM_MODEL_DIR": str(tmp_path / "model")}
    p = run("train.py", "--model_name", "test_efficientnet", "--resize", "32", "32", "--criterion", "symmetric",
            "--optimizer", "Adam", "--augmentation", "BaseAugmentation", "--name", "exp", "--pretrained", "False",
            "--batch_size", "16", "--epochs", "1", "--progress", "False", env=env)
    assert f"training on {tiny_root / 'train'} with --source images" in p.stdout
    cfg = json.loads((tmp_path / "model" / "exp" / "config.json").read_text())
    assert (cfg["model"], cfg["img_size"], cfg["loss"], cfg["optimizer"], cfg["augment"]) == \
        ("test_efficientnet", [32, 32], "symmetric_ce", "adam", "none")
    assert cfg["train_dir"] == str(tiny_root / "train") and cfg["source"] == "images"


def test_original_multi_2_is_three_models_with_cv_and_inference_reads_it_the_original_way(tiny_root, tmp_path):
    md = tmp_path / "model"
    run("train.py", "--data_dir", tiny_root / "train", "--model_dir", md, *BASE, "--img_size", "32", "32",
        "--multi", "2", "--k_folds", "2", "--name", "multi")
    assert all((md / "multi" / f"fold{i}" / t / "best.pth").is_file() for i in (0, 1) for t in ("mask", "gender", "age"))
    oof = __import__("pandas").read_csv(md / "multi" / "oof.csv")  # merge_cv joins the three tasks of each fold
    assert np.allclose(oof[[f"p{k}" for k in range(18)]].sum(axis=1), 1, atol=1e-4)
    # --model_dir relative to ./model, --pth_name as a prefix, --multi_label, --model_name/--resize accepted
    p = run(REPO / "inference.py", "--data_dir", tiny_root / "eval", "--model_dir", "multi", "--pth_name", "best",
            "--multi_label", "True", "--cv", "True", "--model_name", "x", "--resize", "32", "32",
            "--output_dir", tmp_path / "out", cwd=tmp_path)
    assert "using model/multi" in p.stderr and (tmp_path / "out" / "output.csv").is_file()


@pytest.mark.parametrize("script, args, needle", [
    ("inference.py", ["--model", "x"], "unrecognized arguments: --model"),  # no longer --model_dir by abbreviation
    ("train.py", ["--lr_decay_step", "5"], "--scheduler"),
    ("train.py", ["--log_interval", "20"], "--progress"),
    ("train.py", ["--features", "mask"], "--multi"),
    ("train.py", ["--lr", "-1"], "--lr"),
    ("train.py", ["--img_size", "0", "0"], "--img_size"),
    ("train.py", ["--img_size", "-5", "-5"], "--img_size"),
    ("train.py", ["--cv", "True", "--k_folds", "1"], "--k_folds"),
    ("train.py", ["--max_bad", "-1"], "--max_bad"),
    ("train.py", ["--epochs", "0"], "--epochs"),
    ("inference.py", ["--batch_size", "0"], "--batch_size"),
    # every script's numbers are checked the same way (these went on to tracebacks or silent nonsense)
    ("benchmark.py", ["--repeat", "0"], "--repeat"),
    ("benchmark.py", ["--img_size", "0", "0"], "--img_size"),
    ("face_image.py", ["--batch_size", "0"], "--batch_size"),
    ("face_image.py", ["--thresholds", "2", "0.7", "0.7"], "--thresholds"),
    ("predict.py", ["x.jpg", "--model_dir", "m", "--detect_size", "-3"], "--detect_size"),
    ("predict.py", ["x.jpg", "--model_dir", "m", "--min_score", "7"], "--min_score"),
    ("synthetic.py", ["--eval_ratio", "1.5"], "--eval_ratio"),
    ("train.py", ["--age_bounds", "60", "30"], "--age_bounds"),
    ("dataset.py", ["--age_bounds", "30", "30"], "--age_bounds"),
])
def test_bad_flags_get_one_line_and_exit_2(script, args, needle):
    assert_clean_error(run(script, *args, check=False), needle)


def test_evaluation_needs_neither_torch_nor_opencv(tmp_path):
    code = ("import sys, evaluation\n"
            "assert 'torch' not in sys.modules and 'cv2' not in sys.modules, 'heavy import'\n")
    run("-c", code)


def test_demo_data_fallback_is_said(tmp_path):
    p = run(REPO / "train.py", check=False, cwd=tmp_path)
    assert "note: using the demo data (demo_data/train)" in p.stderr and p.returncode == 2


# --- 2. bugs found by reading ------------------------------------------------------------------------
def test_best_epoch_after_a_resume_is_the_last_improvement():
    from trainer import best_epoch_of
    history = [{"epoch": 1, "best": True}, {"epoch": 2, "best": False}, {"epoch": 3, "best": True},
               {"epoch": 4, "best": False}]
    assert best_epoch_of(history)["epoch"] == 3


def test_resume_refuses_other_settings_and_empty_runs_and_reused_folders_refuse_stale_state(tiny_root, tmp_path):
    base = ["train.py", "--data_dir", tiny_root / "train", "--model_dir", tmp_path, *BASE, "--img_size", "32", "32"]
    run(*base, "--run_dir", tmp_path / "r")
    assert_clean_error(run("train.py", "--resume", tmp_path / "r", "--epochs", "3", check=False), "--epochs differ")
    (tmp_path / "r" / "metrics.json").unlink()  # as if killed after its first epoch
    assert_clean_error(run(*base, "--run_dir", tmp_path / "r", check=False), "unfinished run", "--resume")
    (tmp_path / "empty").mkdir()
    shutil.copy(tmp_path / "r" / "config.json", tmp_path / "empty")
    assert_clean_error(run("train.py", "--resume", tmp_path / "empty", check=False), "nothing to resume")


def test_a_run_that_fails_on_its_data_leaves_no_folder(tmp_path):
    p = run("train.py", "--data_dir", tmp_path / "missing", "--model_dir", tmp_path / "m", *BASE, check=False)
    assert_clean_error(p, "missing")
    assert not [d for d in (tmp_path / "m").glob("exp*")]


def test_extra_data_holding_the_training_photos_is_refused(tiny_root, tmp_path):
    """The same folder (here through a link) as --data_dir and --extra_data put every person on both
    sides of the split: trained on and validated on, a flattering validation F1, silently."""
    (tmp_path / "link").symlink_to(tiny_root / "train")
    p = run("train.py", "--data_dir", tiny_root / "train", "--extra_data", tmp_path / "link", "--model_dir",
            tmp_path / "m", *BASE, "--img_size", "32", "32", check=False)
    assert_clean_error(p, str(tmp_path / "link"), "--extra_data", "validated on")
    assert not (tmp_path / "m").exists()


def test_a_run_goes_on_only_with_the_people_it_started_with(tiny_root, tmp_path):
    """Fold jobs (or --resume) on data that changed since the run started drew other folds: a fold's
    validation people could have been trained on by another fold, silently."""
    data = tmp_path / "train"
    shutil.copytree(tiny_root / "train", data)
    cv = ["--data_dir", data, "--run_dir", tmp_path / "run", *BASE, "--img_size", "32", "32", "--cv", "True",
          "--k_folds", "2"]
    run("train.py", *cv, "--fold", "0")
    assert json.loads((tmp_path / "run" / "people.json").read_text())["people"] > 0
    shutil.rmtree(sorted((data / "images").iterdir())[0])  # one person gone
    p = run("train.py", *cv, "--fold", "1", check=False)
    assert_clean_error(p, str(tmp_path / "run"), "started on other data")
    assert not (tmp_path / "run" / "fold1").exists()
    shutil.rmtree(data)
    shutil.copytree(tiny_root / "train", data)  # the data it started with: the fold job goes on
    run("train.py", *cv, "--fold", "1")
    assert (tmp_path / "run" / "oof.csv").is_file()


def test_runs_started_together_get_a_folder_each(tiny_root, tmp_path):
    """Seeds launched together (`for s in 1 2; do python train.py --seed $s & done`) both chose the free
    name exp, loaded their data, then trained into that one folder, each overwriting the other's
    checkpoints. The new folder is now named when it is created, after the data has loaded, and claimed
    with an exclusive mkdir (which closes what remains of the race)."""
    from concurrent.futures import ThreadPoolExecutor
    md = tmp_path / "model"
    with ThreadPoolExecutor(2) as ex:
        procs = list(ex.map(lambda s: run("train.py", "--data_dir", tiny_root / "train", "--model_dir", md, *BASE,
                                          "--img_size", "32", "32", "--seed", str(s)), (1, 2)))
    runs = sorted(md.glob("exp*"))
    assert [r.name for r in runs] == ["exp", "exp2"], runs
    assert sorted(json.loads((r / "config.json").read_text())["seed"] for r in runs) == [1, 2]
    assert all((r / "best.pth").is_file() and json.loads((r / "config.json").read_text())["run_dir"] == str(r)
               for r in runs)
    assert sorted(p.stdout.strip().splitlines()[-1].split("-> ")[-1] for p in procs) == [str(r) for r in runs]


def test_a_mistyped_fixes_file_and_a_bad_fix_value_are_errors(tiny_root, tmp_path):
    base = ["dataset.py", "--data_dir", tiny_root / "train", "--out", tmp_path / "t.csv"]
    assert_clean_error(run(*base, "--fixes", tmp_path / "nope.csv", check=False), "nope.csv", "not found")
    pid = (tiny_root / "train" / "train.csv").read_text().splitlines()[1].split(",")[0]
    (tmp_path / "f.csv").write_text(f"id,field,value\n{pid},gender,unknown\n")
    assert_clean_error(run(*base, "--fixes", tmp_path / "f.csv", check=False), "unknown fix")


def test_jpeg_end_is_found_past_thumbnails_and_before_trailing_video(tmp_path):
    from PIL import Image

    from images import read_rgb, truncated_jpeg
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 48, 3), dtype=np.uint8))
    img.save(tmp_path / "plain.jpg")
    data = (tmp_path / "plain.jpg").read_bytes()
    (tmp_path / "motion.jpg").write_bytes(data + b"\x00\x00\x00\x18ftypmp42" + bytes(200_000))  # phone motion photo
    assert not truncated_jpeg(np.frombuffer(data + bytes(200_000), np.uint8))
    assert read_rgb(tmp_path / "motion.jpg") is not None
    # a main image cut short still holds the end marker of the thumbnail inside its APP1: truncated
    import io
    buf = io.BytesIO()
    img.resize((16, 12)).save(buf, "JPEG")
    payload = b"Exif\x00\x00" + buf.getvalue()
    full = data[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + data[2:]
    cut = full[:len(full) - 300]
    assert b"\xff\xd9" in cut  # the thumbnail's end marker: a search of the file's tail would be fooled
    assert not truncated_jpeg(np.frombuffer(full, np.uint8)) and truncated_jpeg(np.frombuffer(cut, np.uint8))


def test_a_truncated_jpeg_makes_its_person_incomplete_at_table_time(tiny_root, tmp_path):
    from dataset import Log, build_table
    data = tmp_path / "train"
    shutil.copytree(tiny_root / "train", data)
    person = sorted((data / "images").iterdir())[0]
    f = person / "mask2.jpg"
    f.write_bytes(f.read_bytes()[:2000])
    log = Log(quiet=True)
    t = build_table(data, log=log, max_bad=1.0)
    assert log.counts.get("incomplete person") == 1 and log.counts.get("unreadable image") == 1
    assert not (t["path"] == f"images/{person.name}/mask2.jpg").any()


def test_onecycle_warmup_means_what_it_says():
    from optimizer import create_scheduler

    def lrs(name, epochs, steps, warmup, n):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=1.0)
        sched, out = create_scheduler(name, opt, 1.0, epochs, steps, warmup), []
        for _ in range(n):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return np.array(out)
    no_warmup = lrs("onecycle", 10, 10, 0, 12)
    assert no_warmup[1] == pytest.approx(1.0, abs=1e-3)  # at the peak after one step, not after 25 of 100
    one = lrs("onecycle", 10, 10, 1, 12)
    assert one.argmax() == 10 and one[5] < 0.7  # one epoch of 10 steps
    half = lrs("cosine", 4, 10, 0.5, 12)
    assert half[:5].max() < 0.9 and half[5] > 0.9  # a fractional warm-up is not truncated to none
    tiny = lrs("onecycle", 1, 1, 1, 1)  # one step in all: no division by zero
    assert np.isfinite(tiny).all()


@pytest.mark.parametrize("schedule", ["onecycle", "cyclic", "cosine"])
def test_layer_decay_lowers_the_lr_towards_the_input_under_every_schedule(schedule):
    import timm

    from optimizer import create_optimizer, create_scheduler, top_lr
    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=18)
    opt = create_optimizer("adamw", model, 1e-3, 0.01, layer_decay=0.9)
    sched = create_scheduler(schedule, opt, 1e-3, 4, 10, 1)
    for _ in range(10):  # to the peak of each schedule's warm-up
        opt.step()
        sched.step()
    by_name = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    stem, head = by_name[id(model.conv_stem.weight)], by_name[id(model.classifier.weight)]
    assert head == pytest.approx(top_lr(opt)) and stem < 0.25 * head  # 0.9 per block, about 17 blocks down
    plain = create_optimizer("adamw", model, 1e-3, 0.01)
    assert len({g["lr"] for g in plain.param_groups}) == 1


def test_predict_gives_photos_that_share_a_stem_their_own_outputs(tmp_path):
    from pathlib import Path

    from predict import output_names
    files = [Path("a/x.jpg"), Path("b/x.jpg"), Path("c/y.jpg"), Path("a/x.png")]
    names = output_names(files)
    assert len(set(names.values())) == 4 and names[Path("c/y.jpg")] == "y"


def test_no_face_gets_the_same_crop_on_the_fly_as_in_faces_folder(tmp_path):
    """A photo without a face: face_image.py writes the centre region; inference on raw photos must
    feed the same region (it used to feed the whole photo)."""
    from faces import best_boxes, create_detector, face_or_center
    from images import center_crop
    from inference import _face_fn
    img = np.full((512, 384, 3), 128, np.uint8)
    (box, _, found), = best_boxes(create_detector(device="cpu"), [img])
    assert not found
    assert _face_fn()([img])[0].shape == center_crop(img).shape == face_or_center(img, box, found).shape


# --- 3. bad input ------------------------------------------------------------------------------------
def test_output_folders_that_are_files_empty_info_csv_and_a_run_named_twice_exit_2(tiny_root, tiny_runs, tmp_path):
    (tmp_path / "file").write_text("x")
    assert_clean_error(run("train.py", "--data_dir", tiny_root / "train", "--model_dir", tmp_path / "file", *BASE,
                           check=False), "--model_dir")
    assert_clean_error(run("inference.py", "--data_dir", tiny_root / "eval", "--model_dir", tiny_runs["single"],
                           "--output_dir", tmp_path / "file", check=False), "--output_dir")
    assert_clean_error(run("predict.py", tiny_root / "eval" / "images", "--model_dir", tiny_runs["single"], "--out",
                           tmp_path / "file", check=False), "--out")
    assert_clean_error(run("train.py", "--data_dir", tiny_root / "train", "--run_dir", tmp_path / "r", "--cache_dir",
                           tmp_path / "file", *BASE, check=False), "--cache_dir")
    assert_clean_error(run("inference.py", "--data_dir", tiny_root / "eval", "--model_dir", tiny_runs["single"],
                           "--output_dir", tmp_path / "o", "--cache_dir", tmp_path / "file", check=False), "--cache_dir")
    twice = [tiny_runs["single"], tiny_runs["cv"], f"{tiny_runs['single']}/"]
    assert_clean_error(run("inference.py", "--data_dir", tiny_root / "eval", "--ensemble", "True",
                           "--ensemble_model_dir", *twice, "--output_dir", tmp_path / "o", check=False), "named twice")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "info.csv").write_bytes(b"")
    assert_clean_error(run("inference.py", "--data_dir", tmp_path / "eval", "--model_dir", tiny_runs["single"],
                           "--output_dir", tmp_path / "o", check=False), "info.csv")


def test_tiny_images_are_kept_with_a_warning(tiny_root, tmp_path):
    from PIL import Image

    from dataset import Log, build_table
    data = tmp_path / "train"
    shutil.copytree(tiny_root / "train", data)
    person = sorted((data / "images").iterdir())[0]
    Image.new("RGB", (1, 1)).save(person / "normal.jpg")
    log = Log(quiet=True)
    build_table(data, log=log)
    assert log.counts.get("tiny image") == 1


# --- 5. parts of the loop that had no test -----------------------------------------------------------
def test_each_loss_against_a_hand_computation():
    from loss import create_loss
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    target = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    p = torch.softmax(logits, 1)
    ce = -(target * p.log()).sum(1).mean()
    assert create_loss("cross_entropy")(logits, target) == pytest.approx(float(ce), rel=1e-6)
    smooth = target * 0.9 + 0.1 / 3
    assert create_loss("label_smoothing")(logits, target) == pytest.approx(float(-(smooth * p.log()).sum(1).mean()), rel=1e-6)
    focal = -(target * (1 - p) ** 2 * p.log()).sum(1).mean()
    assert create_loss("focal")(logits, target) == pytest.approx(float(focal), rel=1e-6)
    tp = (p * target).sum(0)
    prec, rec = tp / (p.sum(0) + 1e-7), tp / (target.sum(0) + 1e-7)
    f1 = 1 - (2 * prec * rec / (prec + rec + 1e-7)).mean()
    assert create_loss("f1")(logits, target) == pytest.approx(float(f1), rel=1e-5)
    rce = -(p.clamp(min=1e-7) * target.clamp(min=1e-4).log()).sum(1).mean()
    assert create_loss("symmetric_ce")(logits, target) == pytest.approx(float(0.1 * ce + rce), rel=1e-5)
    counts = [6, 3, 2]  # inverse frequency, scaled to mean 1; probability targets: mean over the batch
    inv = torch.tensor([1 / 6, 1 / 3, 1 / 2])
    inv = inv / inv.mean()
    weighted = -(target * p.log() * inv).sum(1).mean()
    assert create_loss("weighted_ce", counts)(logits, target) == pytest.approx(float(weighted), rel=1e-5)


def test_unknown_names_are_refused_by_the_factories_themselves():
    from loss import create_loss
    from optimizer import create_optimizer, create_scheduler
    from utils import UserError
    with pytest.raises(UserError, match="label_smoothing"):
        create_loss("nope")
    with pytest.raises(UserError, match="adamw"):
        create_optimizer("nope", torch.nn.Linear(2, 2), 1e-3)
    with pytest.raises(UserError, match="onecycle"):
        create_scheduler("nope", torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0), 1.0, 1, 1)


def test_weighted_sampler_draws_classes_evenly():
    from loaders import BatchSampler
    labels = np.array([0] * 900 + [1] * 90 + [2] * 10)
    weights = 1.0 / np.bincount(labels)[labels]
    s = BatchSampler(len(labels), 100, shuffle=True, seed=0, weights=weights)
    drawn = labels[np.concatenate(list(s))]
    share = np.bincount(drawn, minlength=3) / len(drawn)
    assert np.all(np.abs(share - 1 / 3) < 0.06), share


def test_mixup_and_cutmix_targets_are_distributions_of_the_batch_labels():
    from engine import make_mixer
    from settings import RunSettings
    cfg = RunSettings(cutmix=1.0, mixup=0.0)
    x = torch.rand(8, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    torch.manual_seed(0)
    np.random.seed(0)  # timm draws lambda and the box with numpy
    xm, t = make_mixer(cfg)(x.clone(), y)
    assert torch.allclose(t.sum(1), torch.ones(8)) and (t.max(1).values < 1).any()  # mixed somewhere
    assert ((t > 0).sum(1) <= 2).all() and (t[:, 8:] == 0).all()  # only this batch's labels
    assert not torch.equal(xm, x)


def test_early_stopping_clip_grad_and_ema_run_and_resume(tiny_root, tmp_path):
    base = ["train.py", "--data_dir", tiny_root / "train", "--model_dir", tmp_path, *TINY, "--epochs", "10",
            "--patience", "1", "--clip_grad", "1.0", "--ema", "0.9", "--lr", "1e-6", "--run_dir", tmp_path / "r"]
    p = run(*base)
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    # lr 1e-6: the weights barely move, so validation F1 stops rising once BatchNorm's running statistics
    # settle (it still rose for 3 epochs here), and patience 1 ends the run well before 10 epochs
    assert "early stop" in p.stdout and len(metrics["history"]) < 10
    last = torch.load(tmp_path / "r" / "last.pth", weights_only=True)
    assert {k.removeprefix("module.") for k in last["ema"]} == set(last["model"])  # EMA weights kept for --resume


def test_ensemble_weights_and_hard_vote_by_hand():
    from inference import vote
    a = np.array([[0.6, 0.4] + [0] * 16, [0.2, 0.8] + [0] * 16])
    b = np.array([[0.1, 0.9] + [0] * 16, [0.3, 0.7] + [0] * 16])
    soft, ans = vote([a, b], [1, 3], "soft")
    assert np.allclose(soft, (a + 3 * b) / 4) and ans.tolist() == [1, 1]
    _, hard = vote([a, b, a], [1, 1, 1], "hard")  # votes: row 0 -> 0, 1, 0; row 1 -> 1, 1, 1
    assert hard.tolist() == [0, 1]
    _, tie = vote([a, b], [1, 1], "hard")  # row 0: one vote each; the soft vote (0.35 vs 0.65) breaks it
    assert tie.tolist() == [1, 1]


def test_zoom_tta_view_is_the_central_90_percent():
    from model import view
    x = torch.arange(2 * 3 * 20 * 20, dtype=torch.float32).view(2, 3, 20, 20)
    z = view(x, "zoom")
    ref = torch.nn.functional.interpolate(x[..., 1:19, 1:19], size=(20, 20), mode="bilinear", align_corners=False)
    assert torch.equal(z, ref) and torch.equal(view(x, "flip_zoom"), ref.flip(-1))


def test_centre_crop_models_see_a_found_face_framed_as_in_training():
    """predict.py on any photo: a model trained on whole competition photos (crop 'center') gets the
    window that frames the face as the centre region frames a competition face; scaled and moved with it."""
    from faces import center_like_box
    from images import center_region
    face = (92, 130.4, 292, 330.4)  # a 200 px face centred at (0.5, 0.45) of a 384x512 photo
    assert np.allclose(center_like_box(face, 384, 512), center_region(384, 512), atol=1)
    double = center_like_box(tuple(2 * v + 100 for v in face), 2000, 2000)
    ref = np.array(center_region(384, 512)) * 2 + 100
    assert np.allclose(double, ref, atol=2)


def test_annotation_numbers_faces_inside_the_photo_and_lists_them_below():
    from predict import annotate
    img = np.zeros((300, 400, 3), np.uint8)
    faces = [dict(box=[b, 10, b + 30, 40], mask=k % 3, mask_name="wear", gender_name="male", age_name="<30",
                  probs=[0.9] + [0.1 / 17] * 17) for k, b in enumerate((0, 20, 40, 380))]  # crowded, one at the edge
    out = annotate(img, faces)
    assert out.size[0] == 400 and out.size[1] > 300 + 4 * 12  # a legend line per face below the photo
    legend = np.asarray(out)[300:].min(axis=2)
    line = (out.size[1] - 300 - 8) // 4
    assert all((legend[4 + k * line:4 + (k + 1) * line] < 200).any() for k in range(4))  # text on every line
    assert np.asarray(out)[10:40, 380:400].any()  # the edge face's box and tag are drawn inside the photo


def test_clip_grad_caps_the_global_norm_and_is_off_by_default():
    from engine import ClipGrad, no_clip
    model = torch.nn.Linear(4, 3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def norm_after(clip):
        opt.zero_grad()
        (model(torch.full((2, 4), 100.0)) ** 2).sum().backward()
        clip(scaler, opt, model.parameters())
        return float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]))
    assert norm_after(no_clip) > 10 and norm_after(ClipGrad(1.0)) == pytest.approx(1.0, rel=1e-4)


def test_heads_cv_run_merges_its_out_of_fold_predictions(tiny_root, tmp_path):
    run("train.py", "--data_dir", tiny_root / "train", "--model_dir", tmp_path, *BASE, "--img_size", "32", "32",
        "--heads", "--cv", "True", "--k_folds", "2", "--run_dir", tmp_path / "h")
    import pandas as pd
    oof = pd.read_csv(tmp_path / "h" / "oof.csv")
    from dataset import Log, build_table
    assert sorted(oof["path"]) == sorted(build_table(tiny_root / "train", log=Log(quiet=True))["path"])
    assert np.allclose(oof[[f"p{k}" for k in range(18)]].sum(axis=1), 1, atol=1e-4)


def test_an_interrupted_faces_folder_is_not_used_by_inference(tiny_root, tiny_runs, tmp_path):
    """train and inference ask the same question (faces/boxes.csv, written last): a faces/ folder that an
    interrupted face_image.py left without it is ignored, and faces are cropped on the fly instead."""
    ck = torch.load(tiny_runs["single"] / "best.pth", weights_only=True)
    ck["meta"]["crop"] = "none"  # as if trained on faces/
    (tmp_path / "r").mkdir()
    torch.save(ck, tmp_path / "r" / "best.pth")
    data = tmp_path / "eval"
    shutil.copytree(tiny_root / "eval", data)
    (data / "faces").mkdir()
    shutil.copy(next((data / "images").iterdir()), data / "faces")  # one crop written, then the run stopped
    run("inference.py", "--data_dir", data, "--model_dir", tmp_path / "r", "--output_dir", tmp_path / "o")
    assert (tmp_path / "o" / "output.csv").is_file()


@pytest.mark.parametrize("err", [PermissionError(13, "Permission denied", "/data/eval/images/a.jpg"),
                                 FileNotFoundError(2, "No such file or directory", "/data/train/images/x/mask1.jpg"),
                                 OSError(28, "No space left on device")])
def test_file_errors_a_user_can_fix_are_one_line_and_exit_2(err, capsys):
    """Permissions (a root-owned eval folder on a shared machine), a file gone mid-run, a full disk: one
    line naming the file and what to do, exit 2, no traceback; other OS errors stay tracebacks (bugs)."""
    from utils import cli

    def raising(e):
        def main(argv):
            raise e
        return cli(main)

    with pytest.raises(SystemExit) as e:
        raising(err)([])
    lines = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {err.filename or err.strerror}")
    with pytest.raises(type(err)):
        raising(err)(["--debug"])
    with pytest.raises(ConnectionRefusedError):
        raising(ConnectionRefusedError(111, "Connection refused"))([])


def test_image_ids_must_be_present_and_unique_in_info_csv_and_in_answers(tmp_path):
    """A blank ImageID used to end in a TypeError, and a repeated one in a submission that evaluation.py
    then refused: both are one line naming the file and the rows, in info.csv and in scored files alike."""
    from dataset import read_eval
    from evaluation import read_answers
    from utils import UserError
    (tmp_path / "images").mkdir()
    for n in ("a.jpg", "b.jpg"):
        (tmp_path / "images" / n).write_bytes(b"x")
    cases = {"ImageID,ans\na.jpg,0\nb.jpg,1\na.jpg,2\n": "'a.jpg' appears twice (rows 2, 4)",
             "ImageID,ans\na.jpg,0\n,1\n": "row 3 has no ImageID",
             "ImageID,ans\na.jpg,0\n  ,1\n": "row 3 has no ImageID"}
    for text, needle in cases.items():
        (tmp_path / "info.csv").write_text(text)
        for read in (lambda: read_eval(tmp_path), lambda: read_answers(tmp_path / "info.csv", "submission")):
            with pytest.raises(UserError, match=__import__("re").escape(needle)):
                read()
    (tmp_path / "info.csv").write_text("ImageID,ans\na.jpg,0\nb.jpg,1\n")
    assert len(read_eval(tmp_path)[1]) == 2 and len(read_answers(tmp_path / "info.csv", "x")) == 2


def test_an_empty_or_foreign_checkpoint_is_named_not_a_traceback(tmp_path):
    """Empty, not a PyTorch file at all, or pickled objects: each gets its own one-line reason."""
    import pathlib

    from model import safe_load
    from utils import UserError
    (tmp_path / "best.pth").write_bytes(b"")
    with pytest.raises(UserError, match="best.pth: not a readable checkpoint .*empty"):
        safe_load(tmp_path / "best.pth")
    (tmp_path / "best.pth").write_bytes(b"garbage\n")  # a text file: torch fails on an opcode, not a global
    with pytest.raises(UserError, match=r"best.pth: not a readable checkpoint \(UnpicklingError: not a PyTorch file\)"):
        safe_load(tmp_path / "best.pth")
    torch.save({"model": {}, "meta": pathlib.PurePosixPath("x")}, tmp_path / "best.pth")
    with pytest.raises(UserError, match="best.pth: refused, the file carries pickled code or objects"):
        safe_load(tmp_path / "best.pth")


def test_a_cache_the_disk_cannot_hold_is_refused_before_decoding(tiny_root, tmp_path, monkeypatch):
    """Its file is sparse, so a full disk showed only after most of the decoding, as a bare ENOSPC. The disk
    is made to report 1 MiB free (filling a real one would take the machine with it if the check broke)."""
    import cache
    from utils import UserError
    paths = sorted((tiny_root / "train" / "images").rglob("*.jpg"))[:2]
    real = shutil.disk_usage
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda p: real(p)._replace(free=2**20))
    with pytest.raises(UserError, match=r"cache of 2 images at 512x512 needs 2 MiB and the disk has 1 MiB free"):
        cache.cached_images(paths, [((512, 512), "center")], tmp_path / "cache")  # 1.5 MiB
    assert not (tmp_path / "cache").exists()
    small = cache.cached_images(paths, [((256, 256), "center")], tmp_path / "cache")  # 0.4 MiB fits
    assert small[((256, 256), "center")].ok.all()


FORKED_SIGTERM = """
import multiprocessing as mp, signal, sys
from utils import sigterm_unwinds

def disposition(_):
    return signal.getsignal(signal.SIGTERM) == signal.SIG_DFL

with sigterm_unwinds():
    assert signal.getsignal(signal.SIGTERM) != signal.SIG_DFL  # the script itself unwinds on SIGTERM
    with mp.get_context("fork").Pool(2) as pool:
        sys.exit(0 if all(pool.map(disposition, range(4))) else 1)
"""


def test_forked_workers_die_on_sigterm_as_before(tmp_path):
    """Scripts unwind on SIGTERM (utils.sigterm_unwinds), but their forked workers must not: Pool.terminate()
    sends them SIGTERM, and workers unwinding instead of dying left synthetic.py hanging in 2 runs of 3."""
    script = tmp_path / "forked.py"
    script.write_text(FORKED_SIGTERM)
    p = run(script, check=False, timeout=120, env={"PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stderr[-2000:]
    for i in range(2):  # the pool that hung: synthetic.py's, ended by its with-block
        run("synthetic.py", "--out", tmp_path / f"d{i}", "--people", "30", "--seed", "3", timeout=120)
