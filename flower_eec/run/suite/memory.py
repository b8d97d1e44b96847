"""The peak memory of a process tree (a run and all its descendants: Ray's workers included),
read from /proc."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path

SAMPLE_S = 0.5  # how often the memory of a run's process tree is read
PROC = Path("/proc")


def parent_of(stat: str) -> int:
    """The parent pid in the text of ``/proc/<pid>/stat`` (the command name may hold spaces
    and parentheses: the fields after the last ')' are read)."""
    return int(stat.rsplit(")", 1)[1].split()[1])


def field_kib(text: str, name: str) -> int:
    """A ``Name:   1234 kB`` field of ``/proc/<pid>/status`` or ``smaps_rollup``, in bytes
    (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1]) * 1024
    return 0


def tree(root: int, parents: Mapping[int, int]) -> set[int]:
    """``root`` and every process below it, from a pid -> parent pid table."""
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    found, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def process_parents(proc: Path = PROC) -> dict[int, int]:
    """pid -> parent pid of every process now."""
    parents = {}
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = parent_of((entry / "stat").read_text())
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
    return parents


def tree_memory(root: int, proc: Path = PROC) -> tuple[int, int]:
    """Resident and proportional memory (bytes) of ``root``'s process tree, now: the sum of
    the resident set sizes, and of the proportional set sizes (which count a shared page once;
    0 where ``smaps_rollup`` cannot be read)."""
    rss = pss = 0
    for pid in tree(root, process_parents(proc)):
        try:
            rss += field_kib((proc / str(pid) / "status").read_text(), "VmRSS")
        except OSError:
            continue  # gone meanwhile
        try:
            pss += field_kib((proc / str(pid) / "smaps_rollup").read_text(), "Pss")
        except OSError:
            pass  # not readable here: the RSS is still counted
    return rss, pss


class TreeSampler(threading.Thread):
    """Reads ``tree_memory(root)`` every ``interval`` seconds until ``stop()``; keeps peaks."""

    def __init__(self, root: int, interval: float = SAMPLE_S) -> None:
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.peak_rss = self.peak_pss = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while True:
            rss, pss = tree_memory(self.root)
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            if self._stop_event.wait(self.interval):
                return

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
