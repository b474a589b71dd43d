import codemode


def test_all_is_sorted_and_complete() -> None:
    exported = [name for name in dir(codemode) if not name.startswith("_") and name != "annotations"]
    public = sorted(
        n for n in exported if n not in {"__version__"} and not isinstance(getattr(codemode, n), type(codemode))
    )
    assert codemode.__all__ == sorted(codemode.__all__)
    assert sorted(codemode.__all__) == public
