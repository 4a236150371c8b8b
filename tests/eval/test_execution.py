"""The sandbox: passing and failing programs, time and memory limits, no network, a throw-away dir."""

from __future__ import annotations

from refusion.eval.execution import run_program
from refusion.eval.tasks import get_task
from refusion.eval.tasks.sources import HUMANEVAL, read_jsonl


def test_passing_and_failing_programs():
    assert run_program("assert sum([1, 2, 3]) == 6\n").status == "passed"
    failed = run_program("def f(x):\n    return x + 1\nassert f(1) == 3, 'f is wrong'\n")
    assert failed.status == "failed" and not failed.passed and "f is wrong" in failed.output
    assert run_program("def broken(:\n").status == "failed"


def test_infinite_loop_times_out():
    result = run_program("while True:\n    pass\n", timeout_s=1.0)
    assert result.status == "timeout" and not result.passed and result.seconds < 5


def test_sleeping_program_is_killed_by_the_wall_clock():
    result = run_program("import time\ntime.sleep(30)\n", timeout_s=1.0)
    assert result.status == "timeout" and result.seconds < 5


def test_memory_bomb_is_stopped():
    result = run_program("blob = bytearray(2 * 1024 ** 3)\nprint('allocated')\n", memory_mb=256)
    assert not result.passed and "MemoryError" in result.output and "allocated" not in result.output


def test_no_network_no_subprocess_and_a_fresh_directory(tmp_path):
    sock = run_program("import socket\nsocket.create_connection(('127.0.0.1', 9))\n")
    assert sock.status == "failed" and "PermissionError" in sock.output
    assert run_program("import subprocess\nsubprocess.run(['true'])\n").status == "failed"
    assert run_program("import os\nassert os.listdir('.') == ['program.py'], os.listdir('.')\n").passed
    marker = tmp_path / "keep.txt"
    marker.write_text("x")
    deleting = run_program(f"import os\nos.remove({str(marker)!r})\n")
    assert deleting.status == "failed" and "PermissionError" in deleting.output and marker.exists()


def test_humaneval_and_mbpp_reference_solutions_pass_and_wrong_ones_fail():
    humaneval = get_task("humaneval")
    example = humaneval.examples(1)[0]
    canonical = read_jsonl(HUMANEVAL.path())[0]["canonical_solution"]
    assert humaneval.evaluate(example, canonical)[1]  # a bare body continues the prompt
    whole = f"Sure:\n```python\n{example['prompt']}{canonical}```\n"
    assert humaneval.evaluate(example, whole)[1]  # the whole function in a code block
    assert not humaneval.evaluate(example, "    return False\n")[1]

    mbpp = get_task("mbpp")
    example = mbpp.examples(1)[0]  # remove first and last occurrence of a character
    right = ("```python\ndef remove_Occ(s, ch):\n    i = s.find(ch)\n    if i >= 0:\n        s = s[:i] + s[i + 1:]\n"
             "    j = s.rfind(ch)\n    if j >= 0:\n        s = s[:j] + s[j + 1:]\n    return s\n```")
    assert mbpp.evaluate(example, right)[1]
    assert not mbpp.evaluate(example, "```python\ndef remove_Occ(s, ch):\n    return s[1:-1]\n```")[1]
