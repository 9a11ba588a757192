"""`isep data import-d4rl` never deletes or replaces what it did not create, and checks its input
before it writes: each case runs the real command against a store that also holds someone else's
files, and compares the whole store (and its parent) before and after."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from isep.cli import main
from tests.helpers import tree_digest


def write_d4rl(path, obs_shape=(30, 11), act_shape=(30, 3)) -> None:
    """A D4RL-format file (hopper-sized by default) with one termination and one time-out."""
    rng = np.random.default_rng(0)
    n = obs_shape[0]
    term, tout = np.zeros(n, bool), np.zeros(n, bool)
    term[9], tout[19] = True, True
    with h5py.File(path, "w") as f:
        f["observations"] = rng.normal(size=obs_shape).astype(np.float32)
        f["actions"] = rng.uniform(-1, 1, size=act_shape).astype(np.float32)
        f["rewards"] = rng.normal(size=n).astype(np.float32)
        f["terminals"], f["timeouts"] = term, tout


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A store holding a namespace `local/halfcheetah` with a dataset-like folder and a stray user
    file, next to an unrelated file in the store's parent."""
    root = tmp_path / "parent" / "store"
    dataset = root / "local" / "halfcheetah" / "medium-v0" / "data"
    dataset.mkdir(parents=True)
    (dataset / "metadata.json").write_text('{"dataset_id": "local/halfcheetah/medium-v0"}')
    (root / "local" / "halfcheetah" / "notes.txt").write_text("someone else's file")
    (tmp_path / "parent" / "keep.txt").write_text("not the store's")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    write_d4rl(tmp_path / "hopper.hdf5")
    return root


@pytest.mark.parametrize(
    "dataset_id, message",
    [
        ("local/halfcheetah", "does not end in a version (-vN)"),  # a namespace holding datasets
        ("local/halfcheetah/medium-v0", "already exists and holds a dataset"),
        ("local/halfcheetah-v0", None),  # well formed and new: written (the control case)
        ("local", "has no namespace"),
        (".", "has an empty, '.' or '..' part"),
        ("..", "has an empty, '.' or '..' part"),
        ("local/../../x-v0", "has an empty, '.' or '..' part"),
        ("/tmp/x/y-v0", "is not a Minari dataset id"),
        ("d4rl/hopper/medium replay-v2", "may hold only letters, digits"),
        ("d4rl/hopper/medium-replay", "does not end in a version (-vN)"),
    ],
)
def test_import_id_is_checked_before_anything_is_written(dataset_id, message, store, tmp_path, capsys):
    parent = store.parent
    before = tree_digest(parent)
    code = main(["data", "import-d4rl", str(tmp_path / "hopper.hdf5"), "--id", dataset_id])
    err = capsys.readouterr().err
    if message is None:
        assert code == 0, err
        after = tree_digest(parent)
        assert {k: v for k, v in after.items() if k in before} == before  # only additions
        assert any(k.startswith("store/local/halfcheetah-v0/data/") for k in after)
        return
    assert code == 2 and message in err and "Traceback" not in err
    assert tree_digest(parent) == before


def test_a_failed_write_removes_only_what_it_created(store, tmp_path, monkeypatch, capsys):
    """Minari fails after it made the dataset's folders (here: a forced error in the middle of the
    write): the new folders go, the namespace's own files stay."""
    import minari

    before = tree_digest(store.parent)

    def broken(*args, **kwargs):
        (store / "local" / "halfcheetah" / "new-v0" / "data").mkdir(parents=True)
        (store / "local" / "halfcheetah" / "new-v0" / "data" / "main_data.hdf5").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(minari, "create_dataset_from_buffers", broken)
    with pytest.raises(OSError, match="disk full"):
        from isep.data.d4rl_import import import_d4rl

        import_d4rl(tmp_path / "hopper.hdf5", "local/halfcheetah/new-v0")
    assert tree_digest(store.parent) == before


def test_a_failed_write_in_a_new_namespace_removes_the_namespace_it_made(store, tmp_path, monkeypatch):
    import minari

    before = tree_digest(store.parent)

    def broken(*args, **kwargs):
        (store / "local" / "fresh").mkdir()
        (store / "local" / "fresh" / "namespace_metadata.json").write_text("{}")
        (store / "local" / "namespace_metadata.json").write_text("{}")  # Minari adopting an existing folder
        raise RuntimeError("boom")

    monkeypatch.setattr(minari, "create_dataset_from_buffers", broken)
    from isep.data.d4rl_import import import_d4rl

    with pytest.raises(RuntimeError):
        import_d4rl(tmp_path / "hopper.hdf5", "local/fresh/data-v0")
    assert tree_digest(store.parent) == before


@pytest.mark.parametrize(
    "shapes, extra, message",
    [
        (((30,), (30, 3)), [], "'observations' has shape (30,)"),
        (((30, 11), (30,)), [], "'actions' has shape (30,)"),
        (((30, 11), (30, 3)), ["--env", "Hoper-v5"], "unknown --env 'Hoper-v5'"),
        (((30, 11), (30, 3)), ["--env", "HalfCheetah-v5"], "HalfCheetah-v5 has observation/action sizes (17, 6)"),
    ],
)
def test_import_checks_shapes_and_env_before_writing(shapes, extra, message, store, tmp_path, capsys):
    write_d4rl(tmp_path / "bad.hdf5", *shapes)
    before = tree_digest(store.parent)
    code = main(["data", "import-d4rl", str(tmp_path / "bad.hdf5"), "--id", "d4rl/hopper/bad-v0", *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert tree_digest(store.parent) == before


def test_import_with_a_known_env_records_it(store, tmp_path, capsys):
    import minari

    assert main(["data", "import-d4rl", str(tmp_path / "hopper.hdf5"), "--id", "d4rl/hopper/ok-v0",
                 "--env", "Hopper-v5"]) == 0
    assert minari.load_dataset("d4rl/hopper/ok-v0").spec.env_spec.id == "Hopper-v5"
