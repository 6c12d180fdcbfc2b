"""An exact reference for the score of a 1-D SDE without a closed-form marginal: the Fokker–Planck equation

    ∂p/∂t = −∂ₓ(f(x, t)·p) + ½g(t)²·∂ₓ²p,       p(·, 0) = p0,

solved on a grid, so that learned scores of non-affine SDEs (e.g. :class:`~lcssm.sde.TanhSDE`) can be compared with
the true ``∇ₓ log p_t`` and samplers can be run with it (:meth:`FokkerPlanckSolution.score` is a time-conditional
score function ``score_fn(x, t)``).

**Space: finite volumes in flux form.** The unknowns are cell averages on a uniform grid of cell centres
``x_0 … x_{N−1}`` (spacing h). With ``D = ½g²`` the equation reads ``∂p/∂t = −∂ₓJ``, ``J = f·p − D·∂ₓp``, and
the semi-discrete scheme is ``dp_i/dt = −(J_{i+½} − J_{i−½})/h``. The face flux is the **Scharfetter–Gummel**
(exponential-fitting) flux (Scharfetter & Gummel 1969, IEEE Trans. Electron Devices 16, 64; for Fokker–Planck
equations the same idea is Chang & Cooper 1970, J. Comput. Phys. 6, 1), with the drift evaluated at the face:

    J_{i+½} = (D/h)·[B(−Pe)·p_i − B(Pe)·p_{i+1}],    Pe = f(x_{i+½}, t)·h/D,    B(z) = z/(eᶻ − 1).

Why this flux rather than central or upwind differencing of ``f·p``: central differencing loses positivity and
oscillates once the cell Péclet number ``|Pe|`` exceeds 2 (the drift of VP/tanh grows with |x| and β(t));
upwinding is positive but only first-order accurate (numerical diffusion ``|f|h/2``). The SG flux is the exact flux
of the constant-coefficient problem on the face interval: it gives an M-matrix (positive solutions) for every h,
tends to upwinding for ``|Pe| → ∞`` and to central differences plus an ``O(h²)`` diffusion ``f²h²/(12D)`` for
small Pe (second order), and it vanishes exactly when ``p_{i+1}/p_i = e^{Pe}``, the discrete form of the
stationary state ``p ∝ exp(∫2f/g²)`` (exact for constant coefficients; ``O(h²)`` otherwise; for VP's linear drift
``Pe = −x_{i+½}h`` and ``e^{Pe}`` is exactly the ratio of N(0, 1) at neighbouring centres, so the discrete stationary
state is the sampled Gaussian and the error at t = T is far below ``O(h²)``). Both ends are
**zero-flux walls** (``J_{−½} = J_{N−½} = 0``), so every column of the tridiagonal operator sums to zero and the
mass ``h·Σp_i`` is conserved to rounding; choose the grid wide enough that p_t is negligible at the walls.

**Time: Crank–Nicolson** (θ = ½, trapezoidal in the operator): ``(I − ½Δt·A(t_{n+1}))p^{n+1} = (I + ½Δt·A(t_n))p^n``,
one tridiagonal (banded) solve per step (:func:`scipy.linalg.solve_banded`, float64). The first ``rannacher``
steps are each replaced by two implicit-Euler half steps (Rannacher 1984) to damp the high-frequency content of a
non-smooth p0, which Crank–Nicolson alone does not damp. The implicit half is an M-matrix, but the explicit half
``I + ½Δt·A`` is non-negative only while ``Δt·D/h² ≲ 1``, so Crank–Nicolson guarantees positivity only for small
steps; the mesh below takes small steps while p is sharp, and in the tests (narrow mixtures and a one-cell delta
start) no negative value occurs. The time mesh is uniform in ``log(s(t) + τ0)`` with the
clock ``s(t) = ∫₀ᵗg² + 0.05·(t/t_end)·∫₀^{t_end}g²`` (the accumulated variance of the noise, plus a little uniform
time so drift-only stretches get steps too). So the steps are geometric, ``Δs ∝ s + τ0``: tiny near t = 0, where
p is as sharp as p0 and changes on the scale ``Δs ≈ var(p0)``, growing with the accumulated variance later, and,
in t, short wherever g² (β) is large. ``τ0`` (default
``(2h)²``, the variance of the finest feature the grid resolves) sets the first step. The requested ``times`` are
inserted into this mesh, so the density is stored exactly at them.

**Score.** ``∂ₓ log p`` by central differences of ``log p`` on the grid (one-sided at the walls; exact for a
Gaussian, whose log-density is quadratic), interpolated linearly in x and linearly in t between the stored times,
which should be dense (a few hundred, e.g. :func:`fokker_planck_times`). ``log p`` is floored at ``floor·max p_t``
(default 1e-14·max), so in the far tails, where p_t is at the level of rounding, the score is flat rather than
noise; outside the grid the score of the nearest grid point is used.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.linalg import solve_banded
from torch import Tensor

from lcssm.errors import ConfigError
from lcssm.sde import SDE

__all__ = ["FokkerPlanckSolution", "fokker_planck_times", "solve_fokker_planck"]

#: a tridiagonal matrix as (sub, diag, super), each of length N: sub[i] = A[i, i−1], super[i] = A[i, i+1]
_Tridiagonal = tuple[np.ndarray, np.ndarray, np.ndarray]

#: points of the quadrature table of the clock s(t)
_CLOCK_POINTS = 4097
#: the share of uniform time in the clock
_CLOCK_UNIFORM = 0.05


# ------------------------------------------------------------------------------------------------ the solution
class FokkerPlanckSolution:
    """The density of a 1-D Fokker–Planck solution on a uniform grid at stored times, with its score.

    ``x_grid`` (N,) cell centres, ``times`` (K,) increasing, ``densities`` (K, N), all float64 on the CPU.
    :meth:`density`, :meth:`log_density` and :meth:`mass` take one time ``t`` (linear interpolation between stored
    times); :meth:`score` is a lcssm time-conditional score function ``score_fn(x, t)`` (x (B, 1), t (B,) or a
    scalar, returns (B, 1) in x's dtype and device), to pass to the samplers as ``solution.score``.
    """

    def __init__(self, x_grid: Tensor, times: Tensor, densities: Tensor, *, floor: float = 1e-14) -> None:
        if densities.shape != (times.numel(), x_grid.numel()):
            raise ConfigError(f"densities must have shape (len(times), len(x_grid)), got {tuple(densities.shape)}")
        if not 0 < floor < 1:
            raise ConfigError(f"floor must lie in (0, 1), got {floor!r}")
        self.x_grid = x_grid.detach().to("cpu", torch.float64)
        self.times = times.detach().to("cpu", torch.float64)
        self.densities = densities.detach().to("cpu", torch.float64)
        self.floor = float(floor)
        self.h = float(self.x_grid[1] - self.x_grid[0])
        self._log = self._floored_log(self.densities)
        self._scores = torch.gradient(self._log, spacing=self.h, dim=1, edge_order=1)[0]

    def _floored_log(self, p: Tensor) -> Tensor:
        top = p.amax(dim=-1, keepdim=True)
        return torch.log(torch.maximum(p, self.floor * top).clamp_min(1e-300))

    def _time_weights(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Indices k, k+1 of the stored times around t (clamped to the stored range) and the weight of k+1."""
        k_max = self.times.numel() - 1
        t = t.clamp(self.times[0], self.times[-1])
        k = (torch.searchsorted(self.times, t, right=True) - 1).clamp(0, max(k_max - 1, 0))
        k1 = (k + 1).clamp(max=k_max)
        span = self.times[k1] - self.times[k]
        w = torch.where(span > 0, (t - self.times[k]) / torch.where(span > 0, span, 1.0), torch.zeros_like(t))
        return k, k1, w

    def _interp_time(self, values: Tensor, t: float | Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64).reshape(1)
        k, k1, w = self._time_weights(t)
        return (1 - w) * values[k[0]] + w * values[k1[0]]

    def density(self, t: float | Tensor) -> Tensor:
        """The density p_t on the grid, shape (N,) (linear in t between stored times)."""
        return self._interp_time(self.densities, t)

    def log_density(self, t: float | Tensor) -> Tensor:
        """``log p_t`` on the grid, shape (N,), floored at ``log(floor·max p_t)``."""
        return self._floored_log(self.density(t))

    def mass(self, t: float | Tensor) -> float:
        """``h·Σ_i p_t(x_i)``: 1 to rounding (the solver normalises p0 and conserves mass)."""
        return float(self.density(t).sum() * self.h)

    def grid_score(self, t: float | Tensor) -> Tensor:
        """``∂ₓ log p_t`` on the grid, shape (N,) (central differences, linear in t between stored times)."""
        return self._interp_time(self._scores, t)

    def cdf(self, x: Tensor, t: float | Tensor) -> Tensor:
        """The distribution function of p_t at the points x (any shape), float64: the cumulative cell masses at the
        cell faces, linear in x within a cell (mass spread evenly over the cell), 0 and the total mass outside."""
        faces = torch.cat([self.x_grid[:1] - self.h / 2, self.x_grid + self.h / 2])
        cum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(self.density(t) * self.h, 0)])
        flat = x.detach().to("cpu", torch.float64).flatten()
        out = np.interp(flat.numpy(), faces.numpy(), cum.numpy())
        return torch.from_numpy(out).view(x.shape)

    def score(self, x: Tensor, t: Tensor | float) -> Tensor:
        """``∇ₓ log p_t(x)`` for x of shape (B, 1) and t of shape (B,) (or a scalar); returns (B, 1) in x's dtype and
        device. Bilinear in (x, t) between grid points and stored times; x outside the grid takes the edge value."""
        if x.dim() != 2 or x.shape[1] != 1:
            raise ConfigError(f"a 1-D Fokker–Planck score needs x of shape (B, 1), got {tuple(x.shape)}")
        xs = x.detach().to("cpu", torch.float64)[:, 0]
        ts = torch.as_tensor(t).detach().to("cpu", torch.float64)
        ts = ts.expand(xs.shape[0]) if ts.dim() == 0 else ts.reshape(-1)
        if ts.shape[0] != xs.shape[0]:
            raise ConfigError(f"t must have shape ({xs.shape[0]},), got {tuple(torch.as_tensor(t).shape)}")
        n = self.x_grid.numel()
        pos = ((xs - self.x_grid[0]) / self.h).clamp(0, n - 1)
        i = pos.floor().long().clamp(max=n - 2)
        wx = pos - i
        k, k1, wt = self._time_weights(ts)
        s = self._scores
        s0 = (1 - wx) * s[k, i] + wx * s[k, i + 1]
        s1 = (1 - wx) * s[k1, i] + wx * s[k1, i + 1]
        return ((1 - wt) * s0 + wt * s1).to(device=x.device, dtype=x.dtype)[:, None]

    def __repr__(self) -> str:
        return (f"FokkerPlanckSolution(N={self.x_grid.numel()}, x∈[{float(self.x_grid[0]):g}, "
                f"{float(self.x_grid[-1]):g}], {self.times.numel()} times in [{float(self.times[0]):g}, "
                f"{float(self.times[-1]):g}])")


# ------------------------------------------------------------------------------------------------ input checks
def _as_float64(name: str, v: Tensor) -> np.ndarray:
    if not isinstance(v, Tensor):
        raise ConfigError(f"{name} must be a torch.Tensor, got {type(v).__name__}")
    a = v.detach().to("cpu", torch.float64).numpy()
    if a.ndim != 1:
        raise ConfigError(f"{name} must be 1-D, got shape {tuple(v.shape)}")
    if not np.isfinite(a).all():
        raise ConfigError(f"{name} must be finite")
    return a


def _check_grid(x_grid: Tensor) -> tuple[np.ndarray, float]:
    """The grid rebuilt in float64 as ``x_0 + i·h`` and h; ConfigError unless uniform and increasing."""
    x = _as_float64("x_grid", x_grid)
    if x.size < 3:
        raise ConfigError(f"x_grid needs at least 3 points, got {x.size}")
    h = (x[-1] - x[0]) / (x.size - 1)
    if not h > 0:
        raise ConfigError("x_grid must be increasing")
    grid = x[0] + h * np.arange(x.size)
    if np.abs(x - grid).max() > 1e-5 * h:
        raise ConfigError("x_grid must be uniform (equal spacing); a finite-volume grid of cell centres is needed")
    return grid, float(h)


def _check_density(p0: Tensor, n: int, h: float) -> np.ndarray:
    p = _as_float64("p0", p0)
    if p.shape != (n,):
        raise ConfigError(f"p0 must have the shape of x_grid ({n},), got {tuple(p0.shape)}")
    if (p < 0).any():
        raise ConfigError(f"p0 must be non-negative, got a minimum {p.min():g}")
    mass = p.sum() * h
    if not mass > 0:
        raise ConfigError("p0 has zero mass")
    return p / mass


def _check_times(times: Tensor, T: float) -> np.ndarray:
    t = _as_float64("times", times)
    if t.size == 0:
        raise ConfigError("times must not be empty")
    if (np.diff(t) <= 0).any():
        raise ConfigError("times must be strictly increasing")
    tol = 1e-9 * T
    if t[0] < -tol or t[-1] > T + tol:
        raise ConfigError(f"times must lie in [0, T={T}], got [{t[0]:g}, {t[-1]:g}]")
    return np.clip(t, 0.0, T)


# ------------------------------------------------------------------------------------------------ the scheme
def _bernoulli(z: np.ndarray) -> np.ndarray:
    """``B(z) = z/(eᶻ − 1)`` with B(0) = 1, without cancellation near 0 or overflow for large |z|."""
    small = np.abs(z) < 1e-6
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        big = z / np.expm1(np.where(small, 1.0, z))
    return np.where(small, 1.0 - 0.5 * z + z * z / 12.0, np.where(z > 700.0, 0.0, big))


def _face_coefficients(sde: SDE, faces: Tensor, t: float, h: float) -> tuple[np.ndarray, np.ndarray]:
    """``(a, b)`` on the interior faces, the SG flux being ``J = a·p_left − b·p_right``: ``a = (D/h)B(−Pe)``,
    ``b = (D/h)B(Pe)``; pure upwinding where D = 0."""
    drift, g = sde.sde(faces, torch.full((faces.shape[0],), t, dtype=torch.float64))
    f = drift.detach().to("cpu", torch.float64).numpy()[:, 0]
    d = 0.5 * np.broadcast_to(g.detach().to("cpu", torch.float64).numpy() ** 2, f.shape)
    if not (np.isfinite(f).all() and np.isfinite(d).all()):
        raise ConfigError(f"{sde!r} gives a non-finite drift or diffusion at t={t:g}")
    pos = d > 0
    safe_d = np.where(pos, d, 1.0)
    pe = f * h / safe_d
    a = np.where(pos, safe_d / h * _bernoulli(-pe), np.maximum(f, 0.0))
    b = np.where(pos, safe_d / h * _bernoulli(pe), np.maximum(-f, 0.0))
    return a, b


def _operator(sde: SDE, faces: Tensor, t: float, h: float) -> _Tridiagonal:
    """The tridiagonal A(t) of ``dp/dt = A p``, zero-flux walls (every column sums to zero)."""
    a, b = _face_coefficients(sde, faces, t, h)
    n = a.size + 1
    sub, diag, sup = np.zeros(n), np.zeros(n), np.zeros(n)
    sub[1:] = a / h  # cell i gains a_{i−½}·p_{i−1}
    sup[:-1] = b / h  # cell i gains b_{i+½}·p_{i+1}
    diag[:-1] -= a / h  # cell i loses a_{i+½}·p_i through its right face
    diag[1:] -= b / h  # and b_{i−½}·p_i through its left face
    return sub, diag, sup


def _apply(op: _Tridiagonal, p: np.ndarray, c: float) -> np.ndarray:
    """``(I + c·A) p``."""
    sub, diag, sup = op
    out = p + c * diag * p
    out[1:] += c * sub[1:] * p[:-1]
    out[:-1] += c * sup[:-1] * p[1:]
    return out


def _solve(op: _Tridiagonal, rhs: np.ndarray, c: float) -> np.ndarray:
    """``(I − c·A)⁻¹ rhs`` by a banded LU solve."""
    sub, diag, sup = op
    ab = np.zeros((3, rhs.size))
    ab[0, 1:] = -c * sup[:-1]
    ab[1] = 1.0 - c * diag
    ab[2, :-1] = -c * sub[1:]
    return solve_banded((1, 1), ab, rhs, overwrite_ab=True, check_finite=False)


def _clock(sde: SDE, t_end: float) -> tuple[np.ndarray, np.ndarray]:
    """A table ``(t, s(t))`` of the clock ``s(t) = ∫₀ᵗg² + 0.05·(t/t_end)·∫₀^{t_end}g²`` (trapezoidal rule)."""
    t = np.linspace(0.0, t_end, _CLOCK_POINTS)
    _, g = sde.sde(torch.zeros(t.size, 1, dtype=torch.float64), torch.from_numpy(t))
    g2 = np.broadcast_to(g.detach().to("cpu", torch.float64).numpy() ** 2, t.shape)
    tau = np.concatenate([[0.0], np.cumsum(0.5 * (g2[1:] + g2[:-1]) * np.diff(t))])
    total = tau[-1] if tau[-1] > 0 else 1.0
    return t, tau + _CLOCK_UNIFORM * total * t / t_end


def _time_mesh(sde: SDE, times: np.ndarray, n_steps: int, tau0: float) -> np.ndarray:
    """Step times from 0 to times[-1]: n_steps steps uniform in log(s(t) + τ0), with the requested times inserted
    (and mesh points within 1e-9·T of one of them dropped)."""
    t_end = float(times[-1])
    t_tab, s_tab = _clock(sde, t_end)
    u = np.linspace(math.log(tau0), math.log(s_tab[-1] + tau0), n_steps + 1)
    mesh = np.interp(np.exp(u) - tau0, s_tab, t_tab)[1:-1]
    near = np.abs(mesh[:, None] - times[None, :]).min(axis=1) <= 1e-9 * sde.T
    return np.unique(np.concatenate([[0.0], mesh[~near], times]))


def _march(sde: SDE, grid: np.ndarray, h: float, p: np.ndarray, mesh: np.ndarray, rannacher: int,
           store: np.ndarray) -> np.ndarray:
    """March p over ``mesh``; returns the densities at the mesh indices ``store`` (increasing), shape (K, N)."""
    faces = torch.from_numpy(0.5 * (grid[1:] + grid[:-1]))[:, None]
    out = np.empty((store.size, grid.size))
    want = {idx: j for j, idx in enumerate(store.tolist())}
    if 0 in want:
        out[want[0]] = p
    op = _operator(sde, faces, float(mesh[0]), h)
    for n in range(1, mesh.size):
        t0, t1 = float(mesh[n - 1]), float(mesh[n])
        dt = t1 - t0
        if n <= rannacher:  # two implicit-Euler half steps
            p = _solve(_operator(sde, faces, t0 + 0.5 * dt, h), p, 0.5 * dt)
            op = _operator(sde, faces, t1, h)
            p = _solve(op, p, 0.5 * dt)
        else:  # Crank–Nicolson
            new = _operator(sde, faces, t1, h)
            p = _solve(new, _apply(op, p, 0.5 * dt), 0.5 * dt)
            op = new
        if n in want:
            out[want[n]] = p
    return out


def fokker_planck_times(sde: SDE, n: int, *, t_min: float = 0.0, t_max: float | None = None,
                        tau0: float = 1e-3) -> Tensor:
    """``n`` storage times in [t_min, t_max] (default [0, T]) uniform in ``log(s(t) + τ0)``, the clock of the time
    mesh (see the module docstring): dense near t = 0 and where g² is large, where p_t changes fastest. Float64."""
    t_max = sde.T if t_max is None else float(t_max)
    if not 0 <= t_min < t_max <= sde.T:
        raise ConfigError(f"fokker_planck_times needs 0 <= t_min < t_max <= T={sde.T}, got {t_min}, {t_max}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ConfigError(f"n must be an integer >= 2, got {n!r}")
    if not tau0 > 0:
        raise ConfigError(f"tau0 must be > 0, got {tau0!r}")
    t_tab, s_tab = _clock(sde, t_max)
    s_lo, s_hi = np.interp([t_min, t_max], t_tab, s_tab)
    u = np.linspace(math.log(s_lo + tau0), math.log(s_hi + tau0), n)
    t = np.interp(np.exp(u) - tau0, s_tab, t_tab)
    t[0], t[-1] = t_min, t_max
    return torch.from_numpy(np.maximum.accumulate(t))


def solve_fokker_planck(
    sde: SDE,
    x_grid: Tensor,
    p0: Tensor,
    times: Tensor,
    *,
    n_steps: int = 2000,
    tau0: float | None = None,
    rannacher: int = 2,
    floor: float = 1e-14,
) -> FokkerPlanckSolution:
    """Solve the 1-D Fokker–Planck equation of ``sde`` from ``p0`` and store the density at ``times``.

    ``x_grid``: uniform, increasing cell centres (N,) (any float dtype; rebuilt in float64 as ``x_0 + i·h``),
    wide enough that p_t is negligible at the zero-flux walls. ``p0``: the initial density at the cell centres, any
    non-negative multiple (it is normalised to ``h·Σp0 = 1``). ``times``: strictly increasing times in [0, T] at
    which the density is stored and between which :class:`FokkerPlanckSolution` interpolates linearly (pass a few
    hundred, e.g. :func:`fokker_planck_times`, if the score is needed at all t). ``n_steps``: the number of steps
    of the time mesh (uniform in ``log(s(t) + τ0)``, module docstring) before the requested times are inserted;
    ``tau0``: its first-step scale, default ``(2h)²``; ``rannacher``: how many first steps are replaced by two
    implicit-Euler half steps; ``floor``: of ``log p`` relative to ``max p_t``.

    The scheme is Scharfetter–Gummel finite volumes with zero-flux walls in space and Crank–Nicolson in time
    (module docstring), second order in h and in the step; mass is conserved to rounding. ``sde.sde(x, t)`` is
    called with x of shape (N − 1, 1) at the cell faces and t of shape (N − 1,), float64. Raises ConfigError for a
    non-uniform or non-1-D grid, a negative or misshapen p0, times outside [0, T] or not increasing, bad settings.
    """
    grid, h = _check_grid(x_grid)
    p = _check_density(p0, grid.size, h)
    t_req = _check_times(times, float(sde.T))
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ConfigError(f"n_steps must be an integer >= 1, got {n_steps!r}")
    if isinstance(rannacher, bool) or not isinstance(rannacher, int) or rannacher < 0:
        raise ConfigError(f"rannacher must be an integer >= 0, got {rannacher!r}")
    tau0 = 4.0 * h * h if tau0 is None else float(tau0)
    if not tau0 > 0:
        raise ConfigError(f"tau0 must be > 0, got {tau0!r}")
    if t_req[-1] > 0:
        mesh = _time_mesh(sde, t_req, n_steps, tau0)
        store = np.searchsorted(mesh, t_req)
        densities = _march(sde, grid, h, p, mesh, rannacher, store)
    else:
        densities = p[None, :]
    return FokkerPlanckSolution(torch.from_numpy(grid), torch.from_numpy(t_req), torch.from_numpy(densities),
                                floor=floor)
