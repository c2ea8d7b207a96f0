import sys

from aha.utils import memory


def test_tcmalloc_is_preloaded_once_where_installed_unless_the_system_allocator_is_asked_for(monkeypatch, capsys):
    monkeypatch.setattr(memory.ctypes.util, "find_library",
                        lambda name: "libtcmalloc_minimal.so.4" if name == "tcmalloc_minimal" else None)
    monkeypatch.delenv("AHA_ALLOCATOR", raising=False)
    monkeypatch.delenv(memory._CHOSEN, raising=False)
    monkeypatch.setenv("LD_PRELOAD", "libother.so")
    env = memory.tcmalloc_environment()
    assert env["LD_PRELOAD"] == "libtcmalloc_minimal.so.4 libother.so" and env[memory._CHOSEN] == "1"
    monkeypatch.setenv(memory._CHOSEN, "1")  # the process run again: never a second time
    assert memory.tcmalloc_environment() is None
    monkeypatch.delenv(memory._CHOSEN)
    monkeypatch.setenv("AHA_ALLOCATOR", "system")
    assert memory.tcmalloc_environment() is None
    monkeypatch.setenv("AHA_ALLOCATOR", "tcmallocc")  # a misspelling: said, and the system's kept
    assert memory.tcmalloc_environment() is None
    assert "AHA_ALLOCATOR='tcmallocc' is neither tcmalloc nor system" in capsys.readouterr().err
    monkeypatch.setenv("AHA_ALLOCATOR", "tcmalloc")
    monkeypatch.setenv("LD_PRELOAD", "/opt/lib/libtcmalloc.so")  # the user's own
    assert memory.tcmalloc_environment() is None
    monkeypatch.delenv("LD_PRELOAD")
    monkeypatch.setattr(memory.ctypes.util, "find_library", lambda name: None)  # not installed
    assert memory.tcmalloc_environment() is None


def test_the_command_line_runs_again_with_tcmalloc_and_calls_from_python_never_do(monkeypatch, tmp_path):
    import aha.cli

    monkeypatch.setattr(memory.ctypes.util, "find_library", lambda name: "libtcmalloc_minimal.so.4")
    monkeypatch.delenv("AHA_ALLOCATOR", raising=False)
    monkeypatch.delenv(memory._CHOSEN, raising=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    calls = []

    def execve(path, args, env):
        calls.append((path, args, env["LD_PRELOAD"]))
        raise SystemExit(0)  # (the process would be replaced here)

    monkeypatch.setattr("os.execve", execve)
    data = tmp_path / "rows.jsonl"
    data.write_text('{"question": "1 + 1 =", "answer": "2"}\n')
    assert aha.cli.main(["data", "check", str(data)]) == 0 and calls == []  # called from Python: as it is
    for script, command in [("/venv/bin/aha", [sys.executable, "/venv/bin/aha"]),
                            ("/src/aha/__main__.py", [sys.executable, "-m", "aha"])]:
        monkeypatch.setattr(sys, "argv", [script, "data", "check", str(data)])
        try:
            aha.cli.main()
        except SystemExit:
            pass
        assert calls.pop() == (sys.executable, command + ["data", "check", str(data)], "libtcmalloc_minimal.so.4")
