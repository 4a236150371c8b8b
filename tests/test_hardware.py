import platform
import subprocess
import sys

import pytest

# Six blocks of 4 MB made, written and freed, 30 times: the temporaries of a batch's forward, in miniature.
FAULTS = """
import resource, sys
if sys.argv[1] == "kept":
    from refusion.hardware import keep_freed_memory
    assert keep_freed_memory()
for round_ in range(30):
    if round_ == 1:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    live = [b"\\1" * (4 << 20) for _ in range(6)]
    del live
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(setting: str) -> int:
    return int(subprocess.run([sys.executable, "-c", FAULTS, setting], check=True, capture_output=True,
                              text=True).stdout)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_kept_freed_memory_is_reused_without_faulting_it_in_again():
    as_it_comes, kept = page_faults("as it comes"), page_faults("kept")
    assert as_it_comes > 10_000  # each round maps its blocks afresh and faults in every page
    assert kept < as_it_comes / 100
