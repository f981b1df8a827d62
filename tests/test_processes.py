"""anatomy.processes: "gone" counts zombies, stop_group leaves nothing, the suite runner names its leftovers.

Reference: the operating system (/proc, ``os.killpg``), through real processes started here.
"""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from anatomy.processes import MARK, group_members, marked, processes, run_suite, stop_group, suite_tmp, wait_for

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc: Linux only")

# A group leader that starts a grandchild, then dies without reaping it and leaves it to PID 1 (or a subreaper):
# the shape of `transformers serve` and its "spawn" children.
ORPHANING = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the leader exits at once, its child stays
    child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
    print(child.pid, flush=True)
    time.sleep(60)
""")


def _leader(code: str, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, **env})  # fmt: skip


def test_group_members_counts_a_zombie():
    zombie = subprocess.Popen(["true"], start_new_session=True)
    wait_for(lambda: [p.state for p in group_members(zombie.pid)] == ["Z"], 10, "the child to exit, unreaped")
    os.killpg(zombie.pid, 0)  # no ProcessLookupError: the zombie still holds its group
    zombie.wait()
    assert group_members(zombie.pid) == []


def test_stop_group_kills_what_ignores_sigterm_and_waits_for_every_member():
    leader = _leader(ORPHANING)
    grandchild = int(leader.stdout.readline())
    assert {p.pid for p in group_members(leader.pid)} == {leader.pid, grandchild}
    stop_group(leader, grace=5)
    assert group_members(leader.pid) == []  # right when it returns, zombies included


def test_stop_group_names_a_survivor(monkeypatch):
    leader = _leader(ORPHANING)
    leader.stdout.readline()
    monkeypatch.setattr("anatomy.processes.signal_group", lambda pgid, sig: None)  # a kill that never arrives
    try:
        with pytest.raises(RuntimeError, match=rf"process group {leader.pid} still has pid \d+ .* after SIGKILL"):
            leader.terminate()  # the leader goes; its grandchild, which ignores SIGTERM, stays
            stop_group(leader, grace=5, limit=0.5)
    finally:
        os.killpg(leader.pid, signal.SIGKILL)
        wait_for(lambda: not [p for p in group_members(leader.pid) if p.state != "Z"], 10, "the group to die")


def test_wait_for_describes_the_state_at_its_deadline():
    state = {"n": 0}

    def tick():
        state["n"] += 1
        return False

    with pytest.raises(TimeoutError, match=r"waited 0.3 s for n=\d+"):
        wait_for(tick, 0.3, lambda: f"n={state['n']}", poll=0.05)
    assert 3 <= state["n"] <= 9  # polled, bounded in count


def test_marked_finds_a_descendant_by_its_environment():
    leader = _leader("import time; time.sleep(60)", **{MARK: "test-run-1"})
    try:
        assert [p.pid for p in marked("test-run-1")] == [leader.pid]
        assert marked("test-run-2") == []
    finally:
        stop_group(leader)


def test_run_suite_fails_naming_a_left_process_and_a_left_file(tmp_path, capfd):
    leaves = ("import subprocess, sys, os; open(os.environ['TMPDIR'] + '/stray.txt', 'w'); "
              "subprocess.Popen(['sleep', '77'], start_new_session=True)")
    assert run_suite([sys.executable, "-c", leaves], tmp=tmp_path) == 1
    err = capfd.readouterr().err
    assert "sleep 77" in err and f"file {tmp_path}/stray.txt" in err
    assert not (tmp_path / "stray.txt").exists()
    assert not [p for p in processes() if p.command == "sleep 77" and p.state != "Z"]


def test_run_suite_passes_a_clean_command_and_keeps_pytests_root(tmp_path, capfd):
    (tmp_path / "pytest-of-someone").mkdir()
    assert run_suite([sys.executable, "-c", "pass"], tmp=tmp_path) == 0
    assert "0 processes or files left" in capfd.readouterr().out
    assert (tmp_path / "pytest-of-someone").is_dir()
    assert run_suite([sys.executable, "-c", "raise SystemExit(3)"], tmp=tmp_path) == 3


def test_each_suite_run_gets_a_fresh_tmpdir_and_the_last_runs_are_kept(tmp_path):
    folders = []
    for index in range(5):
        folders.append(suite_tmp(f"run{index}", root=tmp_path, keep=3))
        os.utime(folders[-1], (1000 + index, 1000 + index))  # the newest last, whatever the clock's resolution
    assert all(folder.parent == folders[0].parent for folder in folders)
    assert sorted(path.name for path in folders[0].parent.iterdir()) == ["run2", "run3", "run4"]
