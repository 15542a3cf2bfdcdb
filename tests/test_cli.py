"""Every script's command line as a user meets it: the original spellings, one clear line and exit
status 2 for bad input, no traceback, the demo data said, signals obeyed."""
import pytest
from conftest import BASE, REPO, assert_clean_error, run


@pytest.mark.e2e
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
    # nan passed every range check and inf every lower bound
    ("train.py", ["--max_bad", "nan"], "--max_bad"),
    ("train.py", ["--lr", "inf"], "--lr"),
    ("face_image.py", ["--margin", "nan", "0.1", "0.1"], "--margin"),
    ("synthetic.py", ["--eval_ratio", "nan"], "--eval_ratio"),
    ("predict.py", ["x.jpg", "--min_score", "nan"], "--min_score"),
])
def test_bad_flags_get_one_line_and_exit_2(script, args, needle):
    assert_clean_error(run(script, *args, check=False), needle)


@pytest.mark.e2e
def test_evaluation_needs_neither_torch_nor_opencv(tmp_path):
    code = ("import sys, evaluation\n"
            "assert 'torch' not in sys.modules and 'cv2' not in sys.modules, 'heavy import'\n")
    run("-c", code)


@pytest.mark.e2e
def test_demo_data_fallback_is_said(tmp_path):
    p = run(REPO / "train.py", check=False, cwd=tmp_path)
    assert "note: using the demo data (demo_data/train)" in p.stderr and p.returncode == 2


@pytest.mark.e2e
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


@pytest.mark.parametrize("err", [PermissionError(13, "Permission denied", "/data/eval/images/a.jpg"),
                                 FileNotFoundError(2, "No such file or directory", "/data/train/images/x/mask1.jpg"),
                                 OSError(28, "No space left on device")])
def test_file_errors_a_user_can_fix_are_one_line_and_exit_2(err, capsys):
    """Permissions (a root-owned eval folder on a shared machine), a file gone mid-run, a full disk: one
    line naming the file and what to do, exit 2, no traceback; other OS errors stay tracebacks (bugs)."""
    from masktk.cli import cli

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


FORKED_SIGTERM = """
import multiprocessing as mp, signal, sys
from masktk.cli import sigterm_unwinds

def disposition(_):
    return signal.getsignal(signal.SIGTERM) == signal.SIG_DFL

with sigterm_unwinds():
    assert signal.getsignal(signal.SIGTERM) != signal.SIG_DFL  # the script itself unwinds on SIGTERM
    with mp.get_context("fork").Pool(2) as pool:
        sys.exit(0 if all(pool.map(disposition, range(4))) else 1)
"""


@pytest.mark.e2e
def test_forked_workers_die_on_sigterm_as_before(tmp_path):
    """Scripts unwind on SIGTERM (utils.sigterm_unwinds), but their forked workers must not: Pool.terminate()
    sends them SIGTERM, and workers unwinding instead of dying left synthetic.py hanging in 2 runs of 3."""
    script = tmp_path / "forked.py"
    script.write_text(FORKED_SIGTERM)
    p = run(script, check=False, timeout=120, env={"PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stderr[-2000:]
    for i in range(2):  # the pool that hung: synthetic.py's, ended by its with-block
        run("synthetic.py", "--out", tmp_path / f"d{i}", "--people", "30", "--seed", "3", timeout=120)


@pytest.mark.e2e
def test_dotenv_in_the_current_folder_is_read(tmp_path):
    """A user's .env in their working folder sets the data dir (it used to be looked for beside the scripts only)."""
    (tmp_path / ".env").write_text(f"SM_CHANNEL_TRAIN={tmp_path / 'my_train_dir'}\n")
    p = run(REPO / "dataset.py", check=False, cwd=tmp_path)
    assert_clean_error(p, "my_train_dir")
