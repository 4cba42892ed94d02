"""``tki embed --engine ray`` never hangs: a resource request the cluster cannot meet is refused in one line or
adapted with a message before the run; a run that gets no result for ``--stall-seconds`` says so and stops.

The arithmetic of :func:`plan_resources` is checked on synthetic clusters; the behaviour on a real local Ray of
2 CPUs (one per module, shut down at its end), with the command run as a subprocess attached to it, each one
bounded in time (a hang fails the test instead of blocking it). The reference for the vectors is the
single-process engine.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime_fixtures import copy_tree_sample, make_tiny_export, pacs_sample
from test_embed_incremental import assert_same_gallery
from tki_sdk.cli.runtime import main
from tki_sdk.cli.runtime import EMBED_FLAGS
from tki_sdk.runtime.pipeline.errors import PipelineError
from tki_sdk.runtime.pipeline.distributed import RayOptions, iter_with_stall, plan_resources

ray = pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- arithmetic
def opts(**kw) -> RayOptions:
    return RayOptions(model_dir="unused", **kw)


def test_plan_keeps_a_request_that_fits():
    got, notes = plan_resources([{"CPU": 8.0}], opts(actors=2, cpus_per_actor=2, decode="tasks"))
    assert (got.actors, got.decode, notes) == (2, "tasks", [])


def test_plan_moves_decoding_into_the_actors_when_no_cpu_is_left():
    # the case that hung: one actor of 2 CPUs on 2 CPUs leaves nothing for the 1-CPU decode tasks
    got, notes = plan_resources([{"CPU": 2.0}], opts(cpus_per_actor=2, decode="tasks"))
    assert (got.actors, got.decode) == (1, "actor") and len(notes) == 1 and "decoding inside the actors" in notes[0]
    got, notes = plan_resources([{"CPU": 4.0}, {"CPU": 4.0}], opts(actors=4, cpus_per_actor=2))
    assert (got.actors, got.decode) == (4, "actor") and len(notes) == 1


def test_plan_auto_decode_is_actor_on_one_node_tasks_on_several():
    assert plan_resources([{"CPU": 16.0}], opts())[0].decode == "actor"
    assert plan_resources([{"CPU": 16.0}, {"CPU": 16.0}], opts())[0].decode == "tasks"


def test_plan_reduces_actors_to_those_that_fit_per_node():
    # 3 CPUs + 3 CPUs hold two actors of 2 CPUs (one per node), not three
    got, notes = plan_resources([{"CPU": 3.0}, {"CPU": 3.0}], opts(actors=3, cpus_per_actor=2, decode="tasks"))
    assert got.actors == 2 and "--actors 3" in notes[0] and "running 2" in notes[0]
    got, _ = plan_resources([{"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 2.0}], opts(actors=5, gpus_per_actor=1))
    assert got.actors == 3


@pytest.mark.parametrize("nodes, kw, words", [
    ([{"CPU": 2.0}], {"gpus_per_actor": 1.0}, "--gpus-per-actor 1"),
    ([{"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}], {"gpus_per_actor": 2.0}, "--gpus-per-actor 2"),
    ([{"CPU": 2.0}, {"CPU": 2.0}], {"cpus_per_actor": 3.0}, "--cpus-per-actor 3"),
])
def test_plan_refuses_what_no_node_has(nodes, kw, words):
    with pytest.raises(PipelineError) as e:  # the library names the field, the CLI its flag
        plan_resources(nodes, opts(**kw))
    said = e.value.render(EMBED_FLAGS)
    assert e.value.code == 2 and words in said and "\n" not in said
    assert words.replace("--", "").replace("-", "_") in str(e.value) and "--" not in str(e.value)


def test_iter_with_stall_passes_items_and_stops_on_a_stall():
    assert list(iter_with_stall(lambda: iter(range(5)), 5.0)) == list(range(5))

    def slow():
        yield 1
        time.sleep(3.0)
        yield 2

    got = []
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        for x in iter_with_stall(slow, 0.5):
            got.append(x)
            time.sleep(1.0)  # the consumer's own time between items does not count as a stall
    assert got == [1] and time.monotonic() - t0 < 2.9

    def broken():
        yield 1
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(iter_with_stall(broken, 5.0))


# ---------------------------------------------------------------------------------------------- real Ray
@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return make_tiny_export(tmp_path_factory.mktemp("export") / "tiny")[0]


@pytest.fixture(scope="module")
def images(pacs_dir, tmp_path_factory):
    dst = tmp_path_factory.mktemp("images")
    copy_tree_sample(pacs_sample(pacs_dir, per_class=4), pacs_dir, dst)  # 32 files
    return dst


@pytest.fixture(scope="module")
def local_gallery(export, images, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "g"
    assert main(["embed", "--model", str(export), "--images", str(images), "--out", str(out), "--threads", "1",
                 "--batch-size", "4"]) == 0
    return out


def run_embed(export: Path, images: Path, out: Path, address: str, *extra: str, timeout: float = 240):
    """``tki embed --engine ray`` as a subprocess attached to ``address``; killed (and the test failed) when it
    runs past ``timeout``."""
    argv = [sys.executable, "-m", "tki_sdk.cli.runtime", "embed", "--model", str(export), "--images", str(images),
            "--out", str(out), "--threads", "1", "--batch-size", "4", "--engine", "ray", "--address", address, *extra]
    t0 = time.monotonic()
    try:
        p = subprocess.run(argv, cwd=str(REPO), capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, "PYTHONPATH": str(REPO / "tests")})
    except subprocess.TimeoutExpired:
        pytest.fail(f"tki embed {' '.join(extra)} still running after {timeout} s")
    return p.returncode, p.stderr, time.monotonic() - t0


def error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("tki embed: error:")]


def test_cpus_per_actor_taking_every_cpu_is_adapted_not_hung(ray_cluster, export, images, local_gallery, tmp_path):
    code, err, _ = run_embed(export, images, tmp_path / "g", ray_cluster, "--cpus-per-actor", "2",
                             "--ray-decode", "tasks")
    assert code == 0, err[-3000:]
    assert "decoding inside the actors" in err
    assert_same_gallery(tmp_path / "g", local_gallery)


def test_more_cpus_per_actor_than_the_cluster_has_is_refused(ray_cluster, export, images, tmp_path):
    code, err, _ = run_embed(export, images, tmp_path / "g", ray_cluster, "--cpus-per-actor", "3")
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and "--cpus-per-actor 3" in lines[0], err[-3000:]
    assert not (tmp_path / "g" / "CURRENT").exists()


def test_decode_tasks_equal_one_process(ray_cluster, export, images, local_gallery, tmp_path):
    assert main(["embed", "--model", str(export), "--images", str(images), "--out", str(tmp_path / "g"),
                 "--threads", "1", "--batch-size", "4", "--engine", "ray", "--address", ray_cluster,
                 "--ray-decode", "tasks"]) == 0
    assert_same_gallery(tmp_path / "g", local_gallery)


def test_a_run_that_gets_no_result_stops_after_stall_seconds(ray_cluster, export, images, tmp_path):
    @ray.remote(num_cpus=2)
    class Hog:  # another job holding every CPU of the cluster
        def ping(self) -> int:
            return 1

    hog = Hog.remote()
    try:
        assert ray.get(hog.ping.remote(), timeout=120) == 1
        code, err, took = run_embed(export, images, tmp_path / "g", ray_cluster, "--stall-seconds", "5",
                                    timeout=180)
    finally:
        ray.kill(hog)
    lines = error_lines(err)
    assert code == 1 and len(lines) == 1 and "no progress for 5 s" in lines[0], err[-3000:]
    assert "0 of 32 files done" in lines[0]
