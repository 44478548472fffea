"""`python -m jattn`, the README's main job, runs and checks every runnable backend."""

import jattn
from jattn import __main__ as main_job


def test_main_job_runs_every_backend_and_they_agree(capsys):
  rc = main_job.main(["--batch", "1", "--seq", "64", "--heads", "4", "--kv-heads", "2",
                      "--head-dim", "16", "--iters", "1"])
  out = capsys.readouterr().out
  assert rc == 0, out
  for name in jattn.implementations():
    assert f"  {name}" in out
  statuses = [line.split()[1] for line in out.split("results (")[1].splitlines()[1:]
              if line.strip()]
  assert set(statuses) <= {"agrees", "skipped"}, out
  # everything this machine can run (compiled or emulated) was run and agreed
  assert statuses.count("agrees") >= 2
