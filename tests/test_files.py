"""masktk/files.py and masktk/cli.py: atomic writes and the command-line manners every script shares."""
import os
import stat
import subprocess
import sys

from conftest import REPO


def test_written_files_follow_the_users_umask(tmp_path):
    """Every file used to be 0600 (tempfile.mkstemp): teammates and containers could not read results."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path\n"
            "from masktk.files import atomic_path, write_json_atomic\n"
            "d = Path(sys.argv[2]); write_json_atomic(d / 'a.json', {'x': 1})\n"
            "with atomic_path(d / 'b.bin') as t:\n    t.write_bytes(b'x')\n")
    for umask, mode in ((0o002, 0o664), (0o077, 0o600)):
        subprocess.run([sys.executable, "-c", code, str(REPO), str(tmp_path)], check=True,
                       preexec_fn=lambda u=umask: os.umask(u))
        for name in ("a.json", "b.bin"):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, (name, oct(umask))
