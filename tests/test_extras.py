"""A missing optional part is one line naming the extra, exit status 3, wherever it is found."""
from __future__ import annotations

from tki_sdk.cli.base import run_main
from tki_sdk.common.errors import EXIT_MISSING
from tki_sdk.common.extras import MissingExtraError, missing_extra


def test_run_main_turns_a_missing_extra_into_exit_3(capsys):
    def body() -> int:
        try:
            import tki_sdk_no_such_module  # noqa: F401
        except ImportError as e:
            raise missing_extra("the widget needs frobnicate", "frob") from e
        return 0

    assert run_main("tki widget", body) == EXIT_MISSING
    err = capsys.readouterr().err
    assert err == "tki widget: error: the widget needs frobnicate; pip install 'tki-sdk[frob]'\n"


def test_missing_extra_is_an_import_error():
    e = missing_extra("x", "runtime")
    assert isinstance(e, ImportError) and isinstance(e, MissingExtraError) and e.extra == "runtime"
