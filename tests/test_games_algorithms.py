"""Nash-MD and the baselines against the paper's claims (Munos et al. 2024, §3-4)."""

import numpy as np
import pytest

from nlhf.games import (
    PreferenceGame,
    duality_gap,
    exploitability,
    fixed_point_residual,
    kl,
    kl_rho,
    preference,
    regularized_best_response,
    solve_nash_lp,
    solve_regularized,
)
from nlhf.games.baselines import best_response_to_mu, ema_opponent, fictitious_play, self_play
from nlhf.games.builders import (
    THREE_RATER_RANKINGS,
    efron_dice,
    fit_bradley_terry,
    from_rankings,
    from_utilities,
    random_game,
    rock_paper_scissors,
    three_rater_example,
    three_rater_nash,
    three_rater_weights,
)
from nlhf.games.last_iterate import extragradient, magnetic_md, optimistic_md
from nlhf.games.nash_md import nash_md, theorem1_bound


@pytest.mark.parametrize("n", [3, 20, 150])
@pytest.mark.parametrize("tau", [0.05, 0.3, 1.0])
def test_theorem1_bound_holds_at_every_t(n, tau):
    game = PreferenceGame(
        random_game(n, seed=n), mu=np.random.default_rng(n).dirichlet(np.ones(n)), tau=tau
    )
    pi_star = solve_regularized(game)
    T = 600
    traj = nash_md(game, T, record=range(1, T + 1))
    kls = np.array([kl(pi_star, p) for p in traj.history])
    assert np.all(kls <= theorem1_bound(tau, traj.steps))
    assert kls[-1] < kls[0]  # and it does converge


def test_theorem1_bound_with_contexts():
    C, n, tau = 4, 10, 0.1
    rng = np.random.default_rng(0)
    game = PreferenceGame(
        np.stack([random_game(n, seed=c) for c in range(C)]),
        mu=rng.dirichlet(np.ones(n), size=C),
        tau=tau,
        rho=rng.dirichlet(np.ones(C)),
    )
    pi_star = solve_regularized(game)
    assert pi_star.shape == (C, n)
    traj = nash_md(game, 300, record=range(1, 301))
    kls = np.array([kl_rho(game, pi_star, p) for p in traj.history])
    assert np.all(kls <= theorem1_bound(tau, traj.steps))
    # per-context equilibria are those of each context alone
    for c in range(C):
        single = PreferenceGame(game.P[c], mu=game.mu[c], tau=tau)
        np.testing.assert_allclose(pi_star[c], solve_regularized(single), atol=1e-10)


def test_rock_paper_scissors_is_uniform():
    P = rock_paper_scissors()
    pi, value = solve_nash_lp(P)
    np.testing.assert_allclose(pi, np.full(3, 1 / 3), atol=1e-9)
    assert value == pytest.approx(0.5)
    np.testing.assert_allclose(
        solve_regularized(PreferenceGame(P, tau=0.1)), np.full(3, 1 / 3), atol=1e-12
    )
    assert exploitability(P, np.full(3, 1 / 3)) == pytest.approx(0.0, abs=1e-15)
    assert exploitability(P, np.array([1.0, 0.0, 0.0])) == pytest.approx(0.5)


def test_lp_equilibria_are_unexploitable():
    for P in [efron_dice(), random_game(40, seed=3), three_rater_example(0.03)]:
        pi, value = solve_nash_lp(P)
        assert value == pytest.approx(0.5, abs=1e-9)
        assert exploitability(P, pi) <= 1e-9
        assert np.all(pi >= 0) and pi.sum() == pytest.approx(1.0)


def test_regularized_equilibrium_fixed_point_and_gap():
    rng = np.random.default_rng(1)
    for n, tau in [(5, 1.0), (50, 0.1), (200, 0.01), (100, 0.002)]:
        game = PreferenceGame(random_game(n, seed=n), mu=rng.dirichlet(np.ones(n)), tau=tau)
        pi, info = solve_regularized(game, return_info=True)
        assert info.converged and duality_gap(game, pi) <= 1e-12
        # pi*_tau(y) ∝ mu(y) exp(P(y > pi*_tau) / tau)
        np.testing.assert_allclose(regularized_best_response(game, pi), pi, rtol=1e-7, atol=1e-14)
        assert fixed_point_residual(game, pi) < 1e-6
        # no policy does better in the regularised game
        other = rng.dirichlet(np.ones(n))
        assert duality_gap(game, other) > 0
        p_tau = preference(game.P, other, pi) - tau * kl(other, game.mu) + tau * kl(pi, game.mu)
        assert p_tau <= 0.5 + 1e-12


def test_duality_gap_matches_its_definition():
    rng = np.random.default_rng(2)
    game = PreferenceGame(random_game(8, seed=1), mu=rng.dirichlet(np.ones(8)), tau=0.2)
    pi = rng.dirichlet(np.ones(8))
    br = regularized_best_response(game, pi)
    direct = preference(game.P, br, pi) - game.tau * kl(br, game.mu) + game.tau * kl(pi, game.mu)
    assert duality_gap(game, pi) == pytest.approx(direct - 0.5, abs=1e-14)
    for _ in range(20):  # the closed-form best response is the best
        q = rng.dirichlet(np.ones(8))
        val = preference(game.P, q, pi) - game.tau * kl(q, game.mu) + game.tau * kl(pi, game.mu)
        assert val <= direct + 1e-14


def test_three_raters_nash_continuous_while_bradley_terry_jumps():
    epsilons = np.linspace(-0.06, 0.06, 25)
    nash = []
    bt_argmax = []
    for eps in epsilons:
        P = three_rater_example(eps)
        pi, _ = solve_nash_lp(P)
        np.testing.assert_allclose(pi, three_rater_nash(eps), atol=1e-8)
        nash.append(pi)
        if abs(eps) > 1e-12:
            bt_argmax.append(int(np.argmax(fit_bradley_terry(P))))
    nash = np.array(nash)
    step = epsilons[1] - epsilons[0]
    # continuous (Lipschitz, constant 4) in epsilon, a genuine mixture throughout
    assert np.abs(np.diff(nash, axis=0)).max() <= 4 * step + 1e-8
    assert nash.min() > 0.05
    # the Bradley-Terry reward maximiser is y3 for eps < 0 and jumps to y1 for eps > 0
    signs = np.sign(epsilons[np.abs(epsilons) > 1e-12])
    assert all(a == (0 if s > 0 else 2) for a, s in zip(bt_argmax, signs))


def test_three_raters_bradley_terry_from_sampled_comparisons():
    """Fit BT to sampled labelled comparisons (not to P itself): the maximiser still jumps."""
    rng = np.random.default_rng(0)
    for eps, expected in [(-0.04, 2), (0.04, 0)]:
        weights = three_rater_weights(eps)
        wins = np.zeros((3, 3))
        for _ in range(30):  # 30 batches of 1000 comparisons
            i, j = rng.integers(0, 3, 1000), rng.integers(0, 3, 1000)
            groups = rng.choice(3, size=1000, p=weights)
            for a, b, g in zip(i, j, groups):
                if a == b:
                    continue
                rank = THREE_RATER_RANKINGS[g]
                winner, loser = (a, b) if rank.index(a) < rank.index(b) else (b, a)
                wins[winner, loser] += 1
        counts = wins + wins.T
        P_hat = np.where(counts > 0, wins / np.maximum(counts, 1), 0.5)
        r = fit_bradley_terry(P_hat, pair_weights=counts)
        assert int(np.argmax(r)) == expected
        pi, _ = solve_nash_lp(P_hat)
        assert pi.min() > 0.1  # the Nash of the same data is a mixture


def test_population_builders():
    P = from_rankings([(0, 1, 2), (2, 1, 0)], [0.7, 0.3])
    assert P[0, 2] == pytest.approx(0.7) and P[2, 0] == pytest.approx(0.3)
    U = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]])
    Q = from_utilities(U, [0.5, 0.5], temperature=[0.5, 0.0])
    PreferenceGame(Q)  # valid
    assert Q[0, 1] == pytest.approx(0.5 * (1 / (1 + np.exp(-2))) + 0.5 * 0.0)
    with pytest.raises(ValueError, match="not a permutation"):
        from_rankings([(0, 0, 1)], [1.0])


def test_self_play_cycles_on_rps_while_nash_md_converges():
    init = np.array([0.5, 0.3, 0.2])
    unreg = PreferenceGame(rock_paper_scissors(), tau=0.0)
    T = 3000
    sp = self_play(unreg, T, eta=0.1, init=init, record=range(T // 2, T + 1))
    expl = np.array([exploitability(unreg.P, p) for p in sp.history])
    assert expl.min() > 0.1  # the last iterate never settles near the equilibrium ...
    assert exploitability(unreg.P, sp.average) < 0.02  # ... only its average does
    # it goes round: each pure strategy takes the lead in turn
    leaders = {int(np.argmax(p)) for p in sp.history}
    assert leaders == {0, 1, 2}
    reg = PreferenceGame(rock_paper_scissors(), tau=0.05)
    md = nash_md(reg, T, init=init)
    assert exploitability(reg.P, md.last) < 1e-6
    fp = fictitious_play(unreg, T, init=init, record=[100, T])
    avg_expl = [exploitability(unreg.P, p) for p in fp.history]
    assert avg_expl[1] < 0.01 and avg_expl[1] < avg_expl[0]
    assert fp.output == "average"
    assert exploitability(unreg.P, fp.last) == pytest.approx(0.5)  # pure best responses


def test_fast_methods_reach_the_regularized_equilibrium():
    game = PreferenceGame(random_game(30, seed=5), tau=0.1)
    pi_star = solve_regularized(game)
    for traj in [
        extragradient(game, 800, eta=1.0),
        optimistic_md(game, 800, eta=1.0),
        magnetic_md(game, 3000, eta=0.5),
    ]:
        assert kl(pi_star, traj.last) < 1e-10, traj.name
        assert duality_gap(game, traj.last) < 1e-10
    br = best_response_to_mu(game)
    assert duality_gap(game, br.policy) > 1e-4  # exploitable
    ema = ema_opponent(game, 2000, beta=0.9)
    assert kl(pi_star, ema.last) < 1e-5


def test_history_and_counts():
    game = PreferenceGame(random_game(6, seed=2), tau=0.2)
    traj = nash_md(game, 50, record=[0, 10, 50, 99])
    assert traj.steps.tolist() == [0, 10, 50]
    assert traj.history.shape == (3, 6) and traj.matvecs == 50
    np.testing.assert_array_equal(traj.history[-1], traj.last)
    const = nash_md(game, 5, eta=0.5)
    assert const.params["schedule"] == "constant"
    with pytest.raises(ValueError, match="eta \\* tau must be <= 1"):
        nash_md(game, 5, eta=10.0)
    with pytest.raises(ValueError, match="Theorem 1 schedule needs tau > 0"):
        nash_md(game.with_tau(0.0), 5)
    with pytest.raises(ValueError, match="needs tau > 0"):
        solve_regularized(game.with_tau(0.0))
