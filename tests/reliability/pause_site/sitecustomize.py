"""Test-only start-up hook (on PYTHONPATH in tests/reliability/test_interrupt.py): a `hybridlab train` of the
variant named by $HYBRIDLAB_TEST_PAUSE ("VARIANT:STEP:FOLDER"; VARIANT "second": whichever training starts
second) waits at that step (helpers.PauseAt), so a test can interrupt a training that Snakemake (or Lightning's
DDP launcher) started at a known point without racing it. Only rank 0 of a DDP run waits; every other process
is left alone."""

import os
import sys

_spec = os.environ.get("HYBRIDLAB_TEST_PAUSE")
if _spec and "train" in sys.argv and "--variant" in sys.argv and os.environ.get("LOCAL_RANK", "0") == "0":
    _variant, _step, _folder = _spec.split(":", 2)
    if _variant == "second":  # the first training to start claims the marker; the second finds it
        try:
            os.close(os.open(os.path.join(_folder, "first_started"), os.O_CREAT | os.O_EXCL))
            _variant = None
        except FileExistsError:
            _variant = sys.argv[sys.argv.index("--variant") + 1]
    if sys.argv[sys.argv.index("--variant") + 1] == _variant:
        import importlib.util

        _path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "helpers.py")
        _spec_obj = importlib.util.spec_from_file_location("_pause_helpers", _path)
        _helpers = sys.modules["_pause_helpers"] = importlib.util.module_from_spec(_spec_obj)
        _spec_obj.loader.exec_module(_helpers)
        _helpers.PauseAt(_helpers.Path(_folder), (int(_step),))()
