"""The data layer on real Minari files: resolution, errors, transitions, transforms, D4RL import."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from isep.data.d4rl_import import import_d4rl, split_episodes
from isep.data.minari_source import DatasetError, load_transitions, resolve
from isep.data.registry import TASKS
from isep.data.transitions import reward_scale


def test_registry_covers_the_papers_14_tasks():
    expected = {
        f"{env}-{kind}-v2"
        for env in ("halfcheetah", "hopper", "walker2d")
        for kind in ("medium", "medium-replay", "medium-expert")
    } | {"pen-human-v1", "pen-cloned-v1", "kitchen-complete-v0", "kitchen-partial-v0", "kitchen-mixed-v0"}
    assert set(TASKS) == expected
    assert TASKS["walker2d-medium-expert-v2"].minari_ids == ("mujoco/walker2d/medium-v0", "mujoco/walker2d/expert-v0")
    assert TASKS["hopper-medium-v2"].ref_max_score == 3234.3
    assert TASKS["kitchen-mixed-v0"].eval_episodes == 50
    assert all(t.ref_max_score > t.ref_min_score for t in TASKS.values())


def test_unknown_id_is_a_clear_error_with_a_suggestion(empty_store):
    with pytest.raises(DatasetError, match=r"Unknown dataset 'walker2d-medum-v2'.*Did you mean 'walker2d-medium-v2'"):
        resolve("walker2d-medum-v2")


def test_missing_dataset_names_it_where_it_looked_and_how_to_fetch(empty_store):
    from isep.data.datamodule import D4RLDataModule

    with pytest.raises(DatasetError) as err:
        D4RLDataModule("walker2d-medium-v2")
    msg = str(err.value)
    assert "mujoco/walker2d/medium-v0" in msg and str(empty_store) in msg
    assert "minari download mujoco/walker2d/medium-v0" in msg and "--data.download true" in msg


def test_unpublished_task_points_to_the_d4rl_import(empty_store):
    with pytest.raises(DatasetError) as err:
        resolve("hopper-medium-replay-v2")
    msg = str(err.value)
    assert "does not publish" in msg
    assert "isep data import-d4rl hopper_medium_replay-v2.hdf5 --id d4rl/hopper/medium-replay-v2" in msg


def test_transitions_tell_terminals_from_timeouts(use_store):
    import minari

    data = load_transitions("test/hopper/random-v0")
    dataset = minari.load_dataset("test/hopper/random-v0")
    episodes = list(dataset.iterate_episodes())
    assert len(data) == sum(len(e.rewards) for e in episodes)
    n_term = sum(int(e.terminations[-1]) for e in episodes)
    n_trunc = sum(int(e.truncations[-1] and not e.terminations[-1]) for e in episodes)
    assert n_term > 0 and n_trunc > 0, "the fixture must hold both kinds of episode ends"
    assert data.terminals.sum() == n_term and data.timeouts.sum() == n_trunc
    assert not np.any(data.terminals.astype(bool) & data.timeouts)
    # next observations are the real ones, also across a time-out (bootstrapped through)
    ep = episodes[0]
    t = len(ep.rewards)
    np.testing.assert_allclose(data.next_observations[:t], ep.observations[1:].astype(np.float32))
    np.testing.assert_allclose(data.observations[1:t], data.next_observations[: t - 1])
    np.testing.assert_allclose(data.episode_returns, [e.rewards.sum() for e in episodes], rtol=1e-5)


def test_iql_reward_scaling_and_raw_rewards(use_store):
    data = load_transitions("test/hopper/random-v0")
    spread = data.episode_returns.max() - data.episode_returns.min()
    assert reward_scale(data, "iql_locomotion") == pytest.approx(1000.0 / spread)
    assert reward_scale(data, "none") == 1.0


def test_datamodule_buffer_clock_and_normalizer(use_store):
    from isep.data.datamodule import D4RLDataModule
    from isep.rng import Draws, run_keys

    dm = D4RLDataModule("test/hopper/random-v0", batch_size=32, steps_per_epoch=5, normalize_states=True)
    assert (dm.obs_dim, dm.act_dim) == (11, 3)
    assert dm.env_id == "Hopper-v5" and dm.reward_transform == "iql_locomotion"
    dm.setup("fit")
    raw = load_transitions("test/hopper/random-v0")
    mean = raw.observations.mean(0)
    np.testing.assert_allclose(dm.obs_mean.numpy(), mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dm.buffer.observations.mean(0).numpy(), 0, atol=1e-4)
    np.testing.assert_allclose(dm.buffer.rewards.numpy(), raw.rewards * dm.reward_scale, rtol=1e-5)
    # Lightning iterates over update counts; the model draws each batch itself
    assert list(dm.train_dataloader()) == [1, 1, 1, 1, 1]
    dm.updates_per_call = 2
    assert list(dm.train_dataloader()) == [2, 2, 1] and len(dm.train_dataloader()) == 3
    # a batch per run, (R, B, ·), a function of the run's key and the update number only
    keys = run_keys([3, 4])
    batch = dm.buffer.sample(Draws(keys, torch.tensor(7)), 32)
    assert batch["observations"].shape == (2, 32, 11) and batch["rewards"].shape == (2, 32)
    assert set(batch) == {"observations", "actions", "rewards", "next_observations", "dones"}
    again = dm.buffer.sample(Draws(keys[1:], torch.tensor(7)), 32)
    torch.testing.assert_close(again["actions"][0], batch["actions"][1], rtol=0, atol=0)
    other = dm.buffer.sample(Draws(keys, torch.tensor(8)), 32)
    assert not torch.equal(other["actions"], batch["actions"])
    # validation batches are fixed: the same on every call
    v1, v2 = list(dm.val_dataloader()), list(dm.val_dataloader())
    assert len(v1) == dm.val_batches and v1[0]["observations"].shape == (32, 11)
    torch.testing.assert_close(v1[3]["actions"], v2[3]["actions"], rtol=0, atol=0)


def test_combining_datasets_concatenates_rows(use_store):
    from isep.data.datamodule import D4RLDataModule

    dm = D4RLDataModule(["test/hopper/random-v0", "test/hopper/other-v0"])
    dm.setup("fit")
    sizes = [len(load_transitions(i)) for i in ("test/hopper/random-v0", "test/hopper/other-v0")]
    assert len(dm.buffer) == sum(sizes)


def test_toy_bandit_is_a_one_step_mdp():
    from isep.data.datamodule import D4RLDataModule
    from isep.data.toy import sparse_optimum_reward

    dm = D4RLDataModule("toy/sparse-optimum", toy_size=1000)
    dm.setup("fit")
    b = dm.buffer
    assert torch.all(b.dones == 1) and dm.reward_transform == "none"
    torch.testing.assert_close(b.rewards, sparse_optimum_reward(b.actions))
    near_opt = ((b.actions - torch.tensor([0.5, 0.5])).norm(dim=-1) < 0.4).float().mean()
    assert 0.07 < near_opt < 0.13  # the sparse optimal mode holds 10 % of the data


def _write_d4rl(path, n=25, with_next=False):
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(n, 4)).astype(np.float32)
    term = np.zeros(n, bool)
    tout = np.zeros(n, bool)
    term[6] = True  # episode 1: steps 0..6, terminated
    tout[15] = True  # episode 2: steps 7..15, timed out; episode 3: 16..24, cut by the file's end
    with h5py.File(path, "w") as f:
        f["observations"] = obs
        f["actions"] = rng.uniform(-1, 1, size=(n, 2)).astype(np.float32)
        f["rewards"] = rng.normal(size=n).astype(np.float32)
        f["terminals"] = term
        f["timeouts"] = tout
        if with_next:
            f["next_observations"] = np.roll(obs, -1, axis=0)
    return obs


def test_d4rl_episode_split_without_next_observations(tmp_path):
    obs = _write_d4rl(tmp_path / "x.hdf5")
    from isep.data.d4rl_import import read_d4rl_hdf5

    eps = split_episodes(read_d4rl_hdf5(tmp_path / "x.hdf5"))
    # terminated: all 7 steps kept; timed-out and file-end episodes lose their last step
    assert [len(e.rewards) for e in eps] == [7, 8, 8]
    assert eps[0].terminations[-1] and not eps[0].truncations[-1]
    assert eps[1].truncations[-1] and not eps[1].terminations[-1]
    np.testing.assert_allclose(eps[1].observations, obs[7:16])  # T+1 observations, all real


def test_d4rl_import_round_trip_keeps_reference_scores(tmp_path, empty_store):
    import minari

    _write_d4rl(tmp_path / "hopper_medium_replay-v2.hdf5", with_next=True)
    summary = import_d4rl(tmp_path / "hopper_medium_replay-v2.hdf5", "d4rl/hopper/medium-replay-v2",
                          env_id=None, ref_min_score=-20.272305, ref_max_score=3234.3)
    assert "3 episodes, 25 steps" in summary
    ds = minari.load_dataset("d4rl/hopper/medium-replay-v2")
    assert ds.storage.metadata["ref_max_score"] == 3234.3
    # the task name now resolves to the imported copy
    assert resolve("hopper-medium-replay-v2").minari_ids == ("d4rl/hopper/medium-replay-v2",)
    # a second import never replaces what is on disk
    before = sorted(p.stat().st_mtime_ns for p in (empty_store / "d4rl").rglob("*") if p.is_file())
    with pytest.raises(DatasetError, match="already exists"):
        import_d4rl(tmp_path / "hopper_medium_replay-v2.hdf5", "d4rl/hopper/medium-replay-v2")
    after = sorted(p.stat().st_mtime_ns for p in (empty_store / "d4rl").rglob("*") if p.is_file())
    assert before == after


def test_d4rl_import_rejects_corrupt_and_incomplete_files(tmp_path, empty_store):
    bad = tmp_path / "bad.hdf5"
    bad.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(DatasetError, match="could not be read as HDF5"):
        import_d4rl(bad, "d4rl/x/bad-v0")
    partial = tmp_path / "partial.hdf5"
    with h5py.File(partial, "w") as f:
        f["observations"] = np.zeros((3, 2))
    with pytest.raises(DatasetError, match=r"lacks \['actions', 'rewards', 'terminals', 'timeouts'\]"):
        import_d4rl(partial, "d4rl/x/partial-v0")
    assert not any(empty_store.iterdir())  # nothing half-written


def test_corrupt_minari_file_is_a_clear_error(use_store, tmp_path, monkeypatch):
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(use_store / "test", copy / "test")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(copy))
    (copy / "test/hopper/random-v0/data/main_data.hdf5").write_bytes(b"\x00" * 64)
    with pytest.raises(DatasetError, match="corrupt"):
        load_transitions("test/hopper/random-v0")
