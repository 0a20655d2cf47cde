"""Run the `dpiqa` command line with every tar member write slowed down (`python tests/slow_tar_writes.py
SECONDS ARGS...`), so a test can SIGKILL a run part-way through a shard. The slowdown lives here, in the
test's process, not as a hook in the engine."""

import runpy
import sys
import tarfile
import time

if __name__ == "__main__":
    seconds = float(sys.argv[1])
    addfile = tarfile.TarFile.addfile

    def slow_addfile(self, tarinfo, fileobj=None):  # tarfile's own signature
        addfile(self, tarinfo, fileobj)
        time.sleep(seconds)

    tarfile.TarFile.addfile = slow_addfile
    sys.argv = ["dpiqa", *sys.argv[2:]]
    runpy.run_module("dpiqa.jobs.cli", run_name="__main__")
