"""The CT window / level reinforcement-learning toolkit (biomip.learn.reinforce) and its
simulated training slices (biomip.data.ct_slices): the score against a direct computation
and an analytic optimum, environment dynamics and reward signs, a DQN that must learn a
corridor, and the safetensors round trip."""

import json

import numpy as np
import pytest

from biomip.core.errors import InputError, ShapeError
from biomip.core.preview import Window
from biomip.data.ct_slices import CT_TISSUES, ct_slice
from biomip.learn.reinforce import (
    ACTIONS,
    DQNAgent,
    WindowLevelEnv,
    greedy_run,
    grid_search_window,
    run_agent,
    train_agent,
    window_contrast,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
STOP = len(ACTIONS) - 1
A = {name: i for i, (name, _, _) in enumerate(ACTIONS)}


def _direct(img, c, w, t, r):
    """The score written out with numpy's clip (the definition of the docstring)."""
    u = (img - c) / w + 0.5
    d = np.clip(u, 0, 1)
    sat = np.mean((u[t] < 0) | (u[t] > 1))
    return abs(d[t].mean() - d[r].mean()) * (1 - sat)


@pytest.fixture(scope="module")
def two_tissues():
    """Target uniform on [100, 200] HU (columns 20..39), reference constant 0 HU: the best
    window is [0, 200] (centre 100, width 200), score mean(target) / 200 = 0.75."""
    img = np.zeros((40, 40))
    img[:, 20:] = np.linspace(100, 200, 40 * 20).reshape(40, 20)
    t = np.zeros(img.shape, bool)
    t[:, 20:] = True
    return img, t, ~t


def test_score_matches_direct_formula(rng):
    img = rng.normal(0, 30, (50, 60))
    img[:25] += 80
    t = np.zeros(img.shape, bool)
    t[5:20, 10:50] = True
    r = np.zeros(img.shape, bool)
    r[30:45, 10:50] = True
    for c, w in [(40, 100), (80, 20), (-500, 3000), (0, 1), (120, 60), (55.5, 250.0)]:
        assert window_contrast(img, (c, w), t, r) == pytest.approx(_direct(img, c, w, t, r), abs=1e-12)
    # a Window object works as (centre, width)
    assert window_contrast(img, Window(40, 100), t, r) == pytest.approx(_direct(img, 40, 100, t, r))
    # roles matter: only the target's saturation is penalised
    assert window_contrast(img, (80, 20), r, t) != pytest.approx(window_contrast(img, (80, 20), t, r))


def test_reference_defaults_to_ring():
    img = np.zeros((30, 30))
    img[10:20, 10:20] = 50.0
    t = img > 0
    from scipy import ndimage as ndi

    ring = ndi.binary_dilation(t, iterations=5) & ~t
    assert window_contrast(img, (25, 50), t) == pytest.approx(_direct(img, 25, 50, t, ring))


def test_grid_search_finds_analytic_optimum(two_tissues):
    img, t, r = two_tissues
    res = grid_search_window(img, t, r, centres=np.arange(0, 201, 10.0), widths=np.arange(20, 401, 20.0))
    assert res.window == (100.0, 200.0)
    assert res.score == pytest.approx(0.75, abs=1e-12)
    assert res.scores.shape == (20, 21)
    assert res.scores.max() == res.score
    # the default grid lands close to it and never beats the analytic maximum
    auto = grid_search_window(img, t, r)
    assert 0.7 < auto.score <= 0.75 + 1e-12
    # the DICOM-like window 40 / 400 is worse
    assert window_contrast(img, (40, 400), t, r) < 0.75


def test_env_dynamics_and_reward_sign(two_tissues):
    img, t, r = two_tissues
    env = WindowLevelEnv(img, t, r, start=(100, 800), max_steps=6)
    s = env.reset()
    assert s.shape == (env.n_features,) and s.dtype == np.float32 and env.n_actions == len(ACTIONS)
    assert env.window == (100.0, 800.0)
    # centre moves are fractions of the width, width moves are factors
    assert env.next_window(A["centre + 25%"]) == (300.0, 800.0)
    assert env.next_window(A["centre - 5%"]) == (60.0, 800.0)
    assert env.next_window(A["width / 2"]) == (100.0, 400.0)
    assert env.next_window(A["width x 1.2"]) == pytest.approx((100.0, 960.0))
    # narrowing towards the optimum: positive reward equal to the score change
    s0, rewards = env.score, []
    _, rew, done, info = env.step(A["width / 2"])
    rewards.append(rew)
    assert rew > 0 and not done and rew == pytest.approx(info["score"] - s0)
    _, rew, _, _ = env.step(A["width / 2"])
    rewards.append(rew)
    assert rew > 0 and env.window == (100.0, 200.0) and env.score == pytest.approx(0.75)
    # at the optimum every move loses: the target saturates or the contrast drops
    for a in range(STOP):
        assert env.score_window(*env.next_window(a)) < env.score
    for a in (A["width / 2"], A["centre - 25%"]):
        _, rew, _, _ = env.step(a)
        rewards.append(rew)
        assert rew < 0
    # the return telescopes to final - start score
    assert sum(rewards) == pytest.approx(env.score - s0)
    # stop: reward 0, episode over, further steps refused
    _, rew, done, _ = env.step(STOP)
    assert rew == 0.0 and done and env.trajectory[-1] == env.trajectory[-2]
    with pytest.raises(InputError, match="episode has ended"):
        env.step(0)
    # the step limit ends an episode; widths stay >= 1
    env = WindowLevelEnv(img, t, r, start=(100, 4.0), max_steps=3)
    done = [env.step(A["width / 2"])[2] for _ in range(3)]
    assert done == [False, False, True] and env.window[1] == 1.0


def test_env_starts(two_tissues):
    img, t, r = two_tissues
    env = WindowLevelEnv(img, t, r, start="full")
    assert env.window == (100.0, 200.0)                       # min 0, max 200
    env = WindowLevelEnv(img, t, r, start="random", seed=3)
    w1 = env.window
    assert env.reset(seed=3) is not None and env.window == w1
    assert WindowLevelEnv(img, t, r, start="random", seed=4).window != w1
    assert 10.0 <= w1[1] <= 200.0


def test_env_callable_reward(two_tissues):
    img, t, r = two_tissues
    env = WindowLevelEnv(img, t, r, reward=lambda c, w: -abs(w - 300.0), start=(100, 600))
    _, rew, _, _ = env.step(A["width / 2"])
    assert env.score == 0.0 and rew == pytest.approx(300.0)


def test_greedy_run_reaches_optimum(two_tissues):
    img, t, r = two_tissues
    windows, scores = greedy_run(WindowLevelEnv(img, t, r, start=(100, 800)))
    assert np.all(np.diff(scores[:-1]) > 0)                   # strictly improving until stop
    assert scores[-1] == pytest.approx(0.75) and tuple(windows[-1]) == (100.0, 200.0)


@pytest.mark.parametrize("bad, exc, match", [
    (dict(window=(10, 0)), InputError, "width > 0"),
    (dict(window="wide"), InputError, "centre, width"),
    (dict(t=np.zeros((5, 5), bool)), ShapeError, "target_mask: got shape"),
    (dict(t=np.zeros((40, 40), bool)), InputError, "empty mask"),
    (dict(overlap=True), InputError, "overlaps"),
    (dict(t=np.full((40, 40), 2)), InputError, "0 / 1"),
])
def test_bad_input(two_tissues, bad, exc, match):
    img, t, r = two_tissues
    t = bad.get("t", t)
    if bad.get("overlap"):
        r = np.ones(img.shape, bool)
    with pytest.raises(exc, match=match):
        window_contrast(img, bad.get("window", (50, 100)), t, r)


def test_bad_env_arguments(two_tissues):
    img, t, r = two_tissues
    with pytest.raises(InputError, match="start"):
        WindowLevelEnv(img, t, r, start="middle")
    with pytest.raises(InputError, match="reward"):
        WindowLevelEnv(img, t, r, reward="dice")
    with pytest.raises(InputError, match="action"):
        WindowLevelEnv(img, t, r).step(len(ACTIONS))
    with pytest.raises(ShapeError, match="image_hu"):
        window_contrast(np.zeros(5), (0, 1), np.ones(5, bool), np.ones(5, bool))


class Corridor:
    """1-D corridor of 6 cells: start in cell 1, action 1 moves right, 0 left; +1 on reaching
    cell 5 (the episode ends), -0.05 per other step, at most 12 steps.  The optimal policy
    goes right 4 times (return 0.85)."""

    n_features, n_actions = 6, 2

    def reset(self, seed=None):
        self.pos, self.t = 1, 0
        return self._s()

    def _s(self):
        return np.eye(6, dtype=np.float32)[self.pos]

    def step(self, a):
        self.pos = min(5, self.pos + 1) if a == 1 else max(0, self.pos - 1)
        self.t += 1
        done = self.pos == 5 or self.t >= 12
        return self._s(), (1.0 if self.pos == 5 else -0.05), done, {}


def test_dqn_learns_corridor():
    agent, hist = train_agent(lambda rng: Corridor(), 40, seed=0, progress=False, warmup=32, hidden=(16,),
                              lr=5e-3, gamma=0.9, epsilon=(1.0, 0.05, 250), target_every=25, reward_scale=1.0,
                              batch_size=32)
    assert hist.returns.shape == (40,) and np.isnan(hist.final_scores).all()
    env = Corridor()
    s = env.reset()
    for pos in range(1, 5):                                     # greedy: right in every cell it meets
        assert agent.act(s, greedy=True) == 1, f"cell {pos}"
        s, _, done, _ = env.step(1)
    assert done
    assert hist.returns[-10:].mean() > hist.returns[:10].mean()


def test_training_is_seeded(two_tissues):
    img, t, r = two_tissues

    def factory(rng):
        return WindowLevelEnv(img, t, r, start="random", seed=int(rng.integers(1 << 31)), max_steps=5)

    runs = [train_agent(factory, 8, seed=1, progress=False, warmup=16, batch_size=8, hidden=(8,))
            for _ in range(2)]
    assert np.array_equal(runs[0][1].returns, runs[1][1].returns)
    state = WindowLevelEnv(img, t, r).reset()
    assert np.array_equal(runs[0][0].q_values(state), runs[1][0].q_values(state))


def test_save_load_round_trip(tmp_path, two_tissues):
    img, t, r = two_tissues
    env = WindowLevelEnv(img, t, r, start=(100, 800), max_steps=8)
    agent = DQNAgent(env.n_features, env.n_actions, hidden=(16, 8), gamma=0.8, seed=5)
    for _ in range(40):                                          # change the weights from their init
        s = env.reset()
        a = agent.act(s)
        s2, rew, done, _ = env.step(a)
        agent.remember(s, a, rew, s2, done)
    for _ in range(5):
        agent.learn()
    path = agent.save(tmp_path / "agent", meta={"note": "test"})
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["meta"]["agent"]["gamma"] == 0.8 and cfg["meta"]["extra"] == {"note": "test"}
    back = DQNAgent.load(path)
    assert back.config() == agent.config() and back.meta == {"note": "test"}
    s = env.reset()
    np.testing.assert_array_equal(back.q_values(s), agent.q_values(s))
    assert run_agent(back, env).actions == run_agent(agent, env).actions


def test_ct_slice_truth():
    s = ct_slice((96, 96), "body", seed=2, noise=12.0, blur=0.0)
    assert s.image.meta["unit"] == "HU" and s.labels.shape == (96, 96)
    assert set(s.names) <= set(CT_TISSUES) and {"fat", "soft tissue", "bone", "organ"} <= set(s.names)
    checked = 0
    for seed in range(4):                                        # noise: zero mean, the std asked for
        sl = ct_slice((128, 128), "body", seed=seed, noise=12.0, blur=0.0)
        for tissue in sl.names[1:]:
            vals = sl.image.array[sl.mask(tissue, erode=2)]
            if vals.size >= 200:
                assert vals.mean() == pytest.approx(sl.values[tissue], abs=2.5), (seed, tissue)
                assert vals.std() == pytest.approx(12.0, rel=0.2), (seed, tissue)
                checked += 1
    assert checked >= 8
    assert (s.image.array[s.labels == 0] < -900).all()
    head = ct_slice((96, 96), "head", seed=2, padding=-3024.0)
    assert head.image.array.min() == -3024.0 and {"grey matter", "white matter", "CSF"} <= set(head.names)
    assert head.values["white matter"] < head.values["grey matter"]
    assert np.array_equal(ct_slice((64, 64), seed=9).image.array, ct_slice((64, 64), seed=9).image.array)
    with pytest.raises(InputError, match="anatomy"):
        ct_slice((64, 64), "leg")


class Counter:
    """Four steps whatever the action, reward t + 1 at step t."""

    n_features, n_actions = 1, 2

    def reset(self, seed=None):
        self.t = 0
        return np.zeros(1, np.float32)

    def step(self, a):
        self.t += 1
        return np.full(1, self.t, np.float32), float(self.t), self.t == 4, {}


def test_n_step_returns_in_replay():
    agent, _ = train_agent(lambda rng: Counter(), 1, seed=0, progress=False, n_step=2, gamma=0.5, reward_scale=1.0,
                           warmup=100, hidden=(4,))
    buf = agent.buffer
    assert buf.n == 4
    np.testing.assert_allclose(buf.r[:4], [1 + 0.5 * 2, 2 + 0.5 * 3, 3 + 0.5 * 4, 4])
    np.testing.assert_allclose(buf.g[:4], [0.25, 0.25, 0.25, 0.5])
    np.testing.assert_array_equal(buf.d[:4], [0, 0, 1, 1])
    np.testing.assert_array_equal(buf.s[:4, 0], [0, 1, 2, 3])
    np.testing.assert_array_equal(buf.s2[:4, 0], [2, 3, 4, 4])


def test_step_cost(two_tissues):
    img, t, r = two_tissues
    env = WindowLevelEnv(img, t, r, start=(100, 800), step_cost=0.01)
    s0 = env.score
    _, rew, _, _ = env.step(A["width / 2"])
    assert rew == pytest.approx(env.score - s0 - 0.01)
    assert env.step(STOP)[1] == 0.0


def test_validation_keeps_best_weights():
    seen = []

    def validate(agent):                                         # the first call scores best
        seen.append({k: v.clone() for k, v in agent.q.state_dict().items()})
        return -float(len(seen))

    agent, hist = train_agent(lambda rng: Counter(), 6, seed=0, progress=False, warmup=4, batch_size=4, hidden=(4,),
                              validate=validate, validate_every=2)
    assert [e for e, _ in hist.validation] == [2, 4, 6] and hist.best_episode == 2
    assert not all(np.array_equal(seen[0][k], seen[-1][k]) for k in seen[0])     # training changed them
    for k, v in agent.q.state_dict().items():
        np.testing.assert_array_equal(v, seen[0][k])
    with pytest.raises(InputError, match="validate"):
        train_agent(lambda rng: Counter(), 1, progress=False, validate=3)
