from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runtime import ManualClock, Runtime
from runtime.testing import atomic_write, sample_scripts, wait_until, write_registry
from runtime.watching import InotifyBackend, WatchUnavailable


def _changed(description: str) -> list[dict[str, Any]]:
    scripts = sample_scripts()
    scripts[1] = {**scripts[1], "description": description}
    return scripts


def _description(rt: Runtime) -> str:
    return str(rt.cache.get_script("true").get(timeout=5).description)


def _save(path: Path, scripts: list[dict[str, Any]], how: str) -> None:
    text = json.dumps({"scripts": scripts})
    if how == "atomic":
        atomic_write(path, text)
    else:
        path.write_text(text)


@pytest.mark.parametrize("how", ["in-place", "atomic"])
def test_inotify_sees_both_kinds_of_save(start_runtime: Callable[..., Runtime], registry_file: Path, how: str) -> None:
    rt = start_runtime(registry_file, watcher="inotify")
    assert rt.watcher.backend_name().get(timeout=5) == "inotify"
    assert _description(rt) == "do nothing"
    for round_ in range(3):  # the watch survives a rename, repeatedly
        _save(registry_file, _changed(f"version {round_}"), how)
        wait_until(lambda r=round_: _description(rt) == f"version {r}", message=f"{how} save not seen")
    assert rt.stats_snapshot()["cache"]["invalidations"] >= 3


def test_invalid_registry_is_kept_out_then_recovers(start_runtime: Callable[..., Runtime], registry_file: Path) -> None:
    rt = start_runtime(registry_file, watcher="inotify")
    assert _description(rt) == "do nothing"
    registry_file.write_text('{"scripts": [{"id": "true", "command": "oops"}]}')
    wait_until(lambda: rt.stats_snapshot()["registry"]["errors"] >= 1)
    snapshot = rt.stats_snapshot()
    assert "field 'command'" in snapshot["registry"]["last_error"]
    assert _description(rt) == "do nothing"  # the last good entry stays in force
    assert rt.cache.get_script("echo").get(timeout=5).id == "echo"  # a miss is served from the last good registry
    _save(registry_file, _changed("fixed"), "atomic")
    wait_until(lambda: _description(rt) == "fixed")


def test_removed_script_is_dropped(start_runtime: Callable[..., Runtime], registry_file: Path) -> None:
    from runtime import ScriptNotFound

    rt = start_runtime(registry_file, watcher="inotify")
    rt.cache.get_script("count").get(timeout=5)
    write_registry(registry_file, [s for s in sample_scripts() if s["id"] != "count"])

    def gone() -> bool:
        try:
            rt.cache.get_script("count").get(timeout=5)
        except ScriptNotFound:
            return True
        return False

    wait_until(gone)


@pytest.mark.parametrize("how", ["in-place", "atomic"])
def test_polling_sees_both_kinds_of_save(start_runtime: Callable[..., Runtime], registry_file: Path, how: str) -> None:
    clock = ManualClock()
    rt = start_runtime(registry_file, watcher="polling", poll_interval=1.0, clock=clock)
    assert rt.watcher.backend_name().get(timeout=5) == "polling"
    assert _description(rt) == "do nothing"
    _save(registry_file, _changed("polled"), how)
    assert _description(rt) == "do nothing"  # nothing happens until the next poll
    clock.advance(1.0)
    wait_until(lambda: _description(rt) == "polled")


def test_a_registry_whose_folder_became_a_file_keeps_the_last_good_one(
    start_runtime: Callable[..., Runtime], tmp_path: Path
) -> None:
    # stat() then fails with NotADirectoryError, not FileNotFoundError: the watcher and the
    # scheduler's registry reads must treat it as a missing file, not fail on it.
    folder = tmp_path / "conf"
    folder.mkdir()
    registry = write_registry(folder / "registry.json", sample_scripts())
    clock = ManualClock()
    rt = start_runtime(registry, watcher="polling", poll_interval=1.0, clock=clock)
    folder.rename(tmp_path / "conf.old")
    folder.write_text("not a folder")
    for _ in range(3):  # polls that find no registry file
        clock.advance(1.0)
        assert _description(rt) == "do nothing"  # the last good registry stays in force
    job = rt.submit("true")  # checked and started with the last good version (its folder is gone: it fails)
    assert rt.wait_job(job, timeout=10)["status"] in ("succeeded", "failed")
    assert rt.running and rt.stats_snapshot()["restarts"] == 0


def test_a_registry_reached_through_a_symlink_is_polled(start_runtime: Callable[..., Runtime],
                                                        tmp_path: Path) -> None:
    # As a Kubernetes ConfigMap is mounted: registry.json -> ..data/registry.json, and ..data
    # a link swapped to a new folder on each update. inotify on the folder sees none of it.
    for version, description in (("v1", "do nothing"), ("v2", "swapped")):
        (tmp_path / version).mkdir()
        write_registry(tmp_path / version / "registry.json", _changed(description))
    (tmp_path / "..data").symlink_to("v1")
    (tmp_path / "registry.json").symlink_to("..data/registry.json")
    clock = ManualClock()
    rt = start_runtime(tmp_path / "registry.json", watcher="auto", poll_interval=1.0, clock=clock)
    assert rt.watcher.backend_name().get(timeout=5) == "polling"
    assert _description(rt) == "do nothing"
    (tmp_path / "..data.new").symlink_to("v2")
    (tmp_path / "..data.new").rename(tmp_path / "..data")  # the swap, atomic
    clock.advance(1.0)
    wait_until(lambda: _description(rt) == "swapped")


def test_inotify_watches_a_registry_in_a_folder_reached_through_a_link(
    start_runtime: Callable[..., Runtime], tmp_path: Path
) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "linked").symlink_to("real")  # as /tmp -> /private/tmp, a linked home folder
    registry = write_registry(tmp_path / "linked" / "registry.json", sample_scripts())
    rt = start_runtime(registry, watcher="inotify")
    assert rt.watcher.backend_name().get(timeout=5) == "inotify"
    _save(registry, _changed("seen"), "atomic")
    wait_until(lambda: _description(rt) == "seen")


def test_falls_back_to_polling_when_inotify_is_unavailable(
    start_runtime: Callable[..., Runtime], registry_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class NoInotify(InotifyBackend):
        def start(self) -> None:
            raise WatchUnavailable("inotify watch failed: [Errno 28] No space left on device (watch limit)")

    clock = ManualClock()
    caplog.set_level("INFO", logger="actors.watcher")
    rt = start_runtime(registry_file, watcher="auto", poll_interval=0.5, clock=clock, inotify_factory=NoInotify)
    assert rt.watcher.backend_name().get(timeout=5) == "polling"
    watcher = rt.stats_snapshot()["watcher"]
    assert watcher["backend"] == "polling" and "watch limit" in watcher["reason"]
    assert any("with polling" in r.getMessage() for r in caplog.records)
    _save(registry_file, _changed("fallback"), "atomic")
    clock.advance(0.5)
    wait_until(lambda: _description(rt) == "fallback")


def test_pyinotify_imports() -> None:
    import pyinotify  # noqa: F401 - with pyasyncore on Python >= 3.12
