"""The synthetic galaxy: morphology parameters and their images, rendered a batch at a time.

A galaxy is a sum of light components, each a Sersic profile (astropy's ``Sersic2D`` formula):

.. math::

    I(x, y) = I_e \\exp\\{-b_n [(r / r_e)^{1/n} - 1]\\},\\qquad
    r^2 = A^2 + (B / (1 - \\epsilon))^2,\\qquad \\Gamma(2n) = 2\\gamma(2n, b_n)

with :math:`A, B` the offsets along the major and minor axis (rotation :math:`\\theta`) and
:math:`\\epsilon = 1 - q` the ellipticity: a bulge (n 1.5 to 5), an exponential disk (n = 1) whose
surface brightness is modulated by m logarithmic spiral arms, an optional bar (n = 0.5, elongated,
in the disk plane so it projects with the disk) and an optional companion. The disk's observed axis
ratio follows from a random inclination, :math:`q^2 = \\cos^2 i\\,(1 - q_0^2) + q_0^2` with intrinsic
thickness :math:`q_0 = 0.12` (Hubble 1926), up to edge-on.

Astropy evaluates one model on one grid; a survey needs thousands a second, so :func:`sersic2d` is the
same formula evaluated with numpy broadcasting on a (B, H, W) grid (checked against
``astropy.modeling.models.Sersic2D`` in the tests). The sum is convolved with a Moffat PSF (as astropy's
``Moffat2DKernel``; one per tile: the tile's seeing) by FFT, given Poisson noise of sky plus source in
the Gaussian limit plus Gaussian read noise, and stretched to uint8 with a fixed asinh stretch
(Lupton et al. 2004) so that brightness stays comparable between galaxies.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from types import MappingProxyType

import numpy as np

__all__ = ["GalaxyParams", "sersic2d", "sersic_bn", "moffat_kernel", "render", "asinh_stretch", "sky_sigma_e", "STRETCH", "FIELD_ARCSEC"]

FIELD_ARCSEC = 32.0
"""Every cutout spans the same field whatever its size in pixels: pixel scale = 32" / size."""
SKY_E = 300.0
"""Sky level per pixel in electrons (Poisson)."""
READ_NOISE_E = 6.0
"""Gaussian read noise per pixel in electrons."""
Q0 = 0.12
"""Intrinsic thickness of disks (axis ratio seen edge-on)."""
STRETCH = MappingProxyType({"kind": "asinh", "unit": "sky sigma", "softening": 2.0, "min": -3.0, "max": 100.0})
"""uint8 = 255 (asinh(x/s) - asinh(min/s)) / (asinh(max/s) - asinh(min/s)), x = (pixel - sky) / sigma_sky,
clipped to [0, 255]."""
_BATCH = 32  # galaxies rendered together: (32, H, W) float32 temporaries stay in cache-sized blocks


def sersic_bn(n):
    """:math:`b_n` with :math:`\\Gamma(2n) = 2\\gamma(2n, b_n)`: r_e encloses half the light."""
    from scipy.special import gammaincinv

    return gammaincinv(2.0 * np.asarray(n, dtype=np.float64), 0.5)


def sersic2d(x, y, amplitude, r_eff, n, x_0, y_0, ellip, theta):
    """astropy's ``Sersic2D.evaluate`` (c = 0), broadcasting over any leading batch axes.

    Give per-galaxy parameters as (B, 1, 1) arrays and x, y as (H, W) grids to get (B, H, W).
    """
    cos_t, sin_t = np.cos(theta), np.sin(theta)
    dx, dy = x - x_0, y - y_0
    x_maj = dx * cos_t + dy * sin_t
    x_min = (-dx * sin_t + dy * cos_t) / (1.0 - ellip)
    return amplitude * _profile((x_maj * x_maj + x_min * x_min) / (r_eff * r_eff), n)


def _profile(z2, n):
    """:math:`\\exp(-b_n (z^{1/n} - 1))` from :math:`z^2 = (r / r_e)^2`, with the cheap forms for the
    exponential disk (n = 1) and the bar (n = 0.5) that need no general power."""
    n_values = np.unique(np.asarray(n))
    if n_values.size == 1 and n_values[0] == 1.0:
        powered = np.sqrt(z2)
    elif n_values.size == 1 and n_values[0] == 0.5:
        powered = z2
    else:
        powered = np.power(z2, (0.5 / np.asarray(n)).astype(z2.dtype))
    bn = sersic_bn(n).astype(z2.dtype)
    return np.exp(-bn * (powered - 1.0))


@dataclass(frozen=True)
class GalaxyParams:
    """Morphology of B galaxies, one (B,) array per field; sizes in arcsec, angles in degrees."""

    smooth: np.ndarray  # bool: an elliptical (bulge-dominated: 75-100% of the light) rather than a disk galaxy
    size_arcsec: np.ndarray  # half-light radius of the disk (of the whole galaxy when smooth)
    bulge_fraction: np.ndarray  # bulge flux / total flux
    bulge_n: np.ndarray
    bulge_size_ratio: np.ndarray  # bulge r_e / size_arcsec
    bulge_axis_ratio: np.ndarray
    axis_ratio: np.ndarray  # observed b/a of the disk (of the galaxy when smooth)
    inclination_deg: np.ndarray  # 0 face-on, 90 edge-on
    position_angle_deg: np.ndarray  # of the major axis, counter-clockwise from +x
    bar_strength: np.ndarray  # 0 none .. 1 strong; the bar takes 0.3 x strength of the disk's light
    bar_angle_deg: np.ndarray  # in the disk plane, from the major axis
    arm_count: np.ndarray  # int, 0 = no spiral arms
    arm_pitch_deg: np.ndarray  # pitch angle: small = tightly wound
    arm_amplitude: np.ndarray  # contrast of the arms, 0..1
    arm_phase_deg: np.ndarray
    companion_flux_ratio: np.ndarray  # 0 = no companion
    companion_separation: np.ndarray  # in units of size_arcsec
    companion_angle_deg: np.ndarray
    snr: np.ndarray  # flux / (sigma_sky sqrt(pi (2 r_e)^2)): signal-to-noise inside 2 half-light radii
    offset_x_px: np.ndarray  # centre offset from the cutout centre (pixels)
    offset_y_px: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, n: int) -> GalaxyParams:
        """Draw ``n`` galaxies: 40% smooth (ellipticals), the rest disks with bulges, bars and arms."""
        smooth = rng.random(n) < 0.4
        size = np.clip(rng.lognormal(np.log(3.5), 0.35, n), 1.0, 6.0)
        cos_i = rng.random(n)
        disk_q = np.sqrt(cos_i**2 * (1 - Q0**2) + Q0**2)
        axis_ratio = np.where(smooth, rng.uniform(0.35, 1.0, n), disk_q)
        inclination = np.where(smooth, np.degrees(np.arccos(axis_ratio)), np.degrees(np.arccos(cos_i)))
        bulge_fraction = np.where(smooth, rng.uniform(0.75, 1.0, n), 0.6 * rng.beta(1.3, 3.0, n))
        has_bar = ~smooth & (rng.random(n) < 0.45)
        has_arms = ~smooth & (rng.random(n) < 0.75)
        arm_count = np.where(has_arms, rng.choice([1, 2, 3, 4], size=n, p=[0.08, 0.55, 0.2, 0.17]), 0)
        has_companion = rng.random(n) < 0.1
        return cls(
            smooth=smooth,
            size_arcsec=size,
            bulge_fraction=bulge_fraction,
            bulge_n=np.where(smooth, rng.uniform(2.5, 5.0, n), rng.uniform(1.5, 4.0, n)),
            bulge_size_ratio=np.where(smooth, 1.0, rng.uniform(0.12, 0.35, n)),
            bulge_axis_ratio=np.where(smooth, axis_ratio, 0.6 + 0.4 * axis_ratio),
            axis_ratio=axis_ratio,
            inclination_deg=inclination,
            position_angle_deg=rng.uniform(0, 180, n),
            bar_strength=np.where(has_bar, rng.uniform(0.15, 1.0, n), 0.0),
            bar_angle_deg=rng.uniform(0, 180, n),
            arm_count=arm_count.astype(np.int64),
            arm_pitch_deg=np.where(has_arms, rng.uniform(8, 40, n), 0.0),
            arm_amplitude=np.where(has_arms, rng.uniform(0.3, 0.9, n), 0.0),
            arm_phase_deg=rng.uniform(0, 360, n),
            companion_flux_ratio=np.where(has_companion, rng.uniform(0.1, 0.6, n), 0.0),
            companion_separation=np.where(has_companion, rng.uniform(1.5, 3.5, n), 0.0),
            companion_angle_deg=rng.uniform(0, 360, n),
            snr=np.clip(rng.lognormal(np.log(60.0), 0.8, n), 5.0, 1000.0),
            offset_x_px=rng.uniform(-1.0, 1.0, n),
            offset_y_px=rng.uniform(-1.0, 1.0, n),
        )

    def __len__(self) -> int:
        return len(self.smooth)

    def columns(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def subset(self, index) -> GalaxyParams:
        return GalaxyParams(**{name: values[index] for name, values in self.columns().items()})


def moffat_kernel(fwhm_px: float, beta: float, half: int) -> np.ndarray:
    """A unit-sum Moffat PSF sampled at pixel centres on a (2 half + 1)^2 grid:

    .. math:: P(r) \\propto (1 + r^2 / \\gamma^2)^{-\\beta},\\qquad
              \\mathrm{FWHM} = 2\\gamma\\sqrt{2^{1/\\beta} - 1}

    (Moffat 1969); the same as astropy's ``Moffat2DKernel(gamma, alpha=beta)`` (checked in the tests),
    without importing astropy.convolution (seconds, in every worker process).
    """
    gamma = fwhm_px / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    axis = np.arange(-half, half + 1, dtype=np.float64)
    kernel = (1.0 + (axis[:, None] ** 2 + axis[None, :] ** 2) / gamma**2) ** -beta
    return kernel / kernel.sum()


def _psf_transfer(fwhm_px: float, padded: int) -> np.ndarray:
    """The rfft2 of a Moffat PSF (beta = 3.5) centred on pixel (0, 0) of a padded grid."""
    import scipy.fft

    half = min(int(np.ceil(4 * fwhm_px)), padded // 2 - 1)
    grid = np.zeros((padded, padded))
    grid[: 2 * half + 1, : 2 * half + 1] = moffat_kernel(fwhm_px, 3.5, half)
    grid = np.roll(grid, (-half, -half), axis=(0, 1))
    return scipy.fft.rfft2(grid.astype(np.float32))


def _col(values) -> np.ndarray:
    """Per-galaxy values as float32 (B, 1, 1), to broadcast against (H, W) grids."""
    return np.asarray(values, dtype=np.float32).reshape(-1, 1, 1)


def _unit_sum(image: np.ndarray) -> np.ndarray:
    """``image`` scaled to sum to 1 per galaxy; zero where a component's light falls between the pixel
    centres of a small grid (a thin bar seen edge-on at 16 px), which was 0 / 0 and a black image."""
    total = image.sum(axis=(-2, -1), keepdims=True)
    return np.divide(image, total, out=np.zeros_like(image), where=total > 0)


def _render_batch(p: GalaxyParams, padded: int, pixel_scale: float) -> np.ndarray:
    """Noise-free images before the PSF on a (B, padded, padded) grid: the galaxy sums to 1, a
    companion adds its flux ratio."""
    axis = np.arange(padded, dtype=np.float32) - (padded - 1) / 2
    x, y = axis[None, None, :], axis[:, None][None]
    r_e = _col(p.size_arcsec / pixel_scale)
    theta = _col(np.radians(p.position_angle_deg))
    x0, y0 = _col(p.offset_x_px), _col(p.offset_y_px)
    bulge = _unit_sum(
        sersic2d(x, y, 1.0, r_e * _col(p.bulge_size_ratio), _col(p.bulge_n), x0, y0, 1 - _col(p.bulge_axis_ratio), theta)
    )
    image = _col(p.bulge_fraction) * bulge
    disk_idx = np.flatnonzero(p.bulge_fraction < 1)
    if disk_idx.size:
        d = p.subset(disk_idx)
        image[disk_idx] += _disk_batch(d, x, y, r_e[disk_idx], theta[disk_idx], x0[disk_idx], y0[disk_idx])
    comp_idx = np.flatnonzero(p.companion_flux_ratio > 0)
    if comp_idx.size:
        c = p.subset(comp_idx)
        sep = c.companion_separation * c.size_arcsec / pixel_scale
        angle = np.radians(c.companion_angle_deg)
        companion = sersic2d(
            x, y, 1.0, _col(0.5 * c.size_arcsec / pixel_scale * np.sqrt(c.companion_flux_ratio)), 1.0,
            _col(c.offset_x_px + sep * np.cos(angle)), _col(c.offset_y_px + sep * np.sin(angle)), 0.3, _col(angle),
        )
        image[comp_idx] += _col(c.companion_flux_ratio) * _unit_sum(companion)
    return image


def _disk_batch(d: GalaxyParams, x, y, r_e, theta, x0, y0) -> np.ndarray:
    """Disk (with arms) and bar light of disk galaxies, weighted by their flux fractions.

    Coordinates in the disk plane: :math:`u = A`, :math:`v = B / q` (deprojected). Arms multiply the
    exponential disk by :math:`1 + w(r)\\,a\\,[((1 + \\cos\\psi)/2)^3 / (5/16) - 1]` with
    :math:`\\psi = m(\\phi - \\phi_0) - m \\ln(r / r_e) / \\tan p` (m arms, pitch p: a logarithmic
    spiral), :math:`w(r) = 1 - e^{-(2r/r_e)^2}` fading the arms towards the centre; the factor's mean
    over :math:`\\psi` is 1, so arms move light without changing the disk's flux.
    """
    cos_t, sin_t = np.cos(theta), np.sin(theta)
    dx, dy = x - x0, y - y0
    u = dx * cos_t + dy * sin_t
    v = (-dx * sin_t + dy * cos_t) / _col(d.axis_ratio)
    r2 = (u * u + v * v) / (r_e * r_e)
    disk = _profile(r2, 1.0)
    arm_idx = np.flatnonzero(d.arm_count > 0)
    if arm_idx.size:
        a = d.subset(arm_idx)
        m = _col(a.arm_count)
        phi = np.arctan2(v[arm_idx], u[arm_idx])
        rr2 = np.maximum(r2[arm_idx], np.float32(1e-6))
        psi = m * (phi - _col(np.radians(a.arm_phase_deg))) - m * np.float32(0.5) * np.log(rr2) / _col(
            np.tan(np.radians(a.arm_pitch_deg))
        )
        wave = ((1 + np.cos(psi)) * np.float32(0.5)) ** 3 / np.float32(5 / 16) - 1
        disk[arm_idx] *= 1 + (1 - np.exp(-4 * rr2)) * _col(a.arm_amplitude) * wave
    disk_weight = _col(1 - d.bulge_fraction)
    out = disk_weight * _unit_sum(disk)
    bar_idx = np.flatnonzero(d.bar_strength > 0)
    if bar_idx.size:
        s = d.subset(bar_idx)
        bar = sersic2d(u[bar_idx], v[bar_idx], 1.0, 0.6 * r_e[bar_idx], 0.5, 0.0, 0.0, 0.75, _col(np.radians(s.bar_angle_deg)))
        bar_weight = disk_weight[bar_idx] * _col(0.3 * s.bar_strength)
        out[bar_idx] = (1 - _col(0.3 * s.bar_strength)) * out[bar_idx] + bar_weight * _unit_sum(bar)
    return out


def sky_sigma_e() -> float:
    """Noise of an empty pixel in electrons: sqrt(sky + read noise^2)."""
    return float(np.sqrt(SKY_E + READ_NOISE_E**2))


def render(
    p: GalaxyParams, size: int, psf_fwhm_arcsec: float, rng: np.random.Generator, *, stretch: bool = False
) -> np.ndarray:
    """Sky-subtracted images in electrons, float32 (B, size, size), PSF-convolved, with noise; with
    ``stretch``, the same through :func:`asinh_stretch` as uint8, a batch at a time (cache-sized).

    The flux follows the SNR: :math:`F = \\mathrm{snr}\\,\\sigma_{sky}\\,2 r_e\\sqrt{\\pi}` (r_e in
    pixels); the noise is :math:`\\mathcal N(0, \\mathrm{sky} + \\max(I, 0) + \\sigma_{read}^2)` per pixel:
    Poisson in its Gaussian limit (the sky alone is 300 electrons a pixel).
    """
    import scipy.fft

    pixel_scale = FIELD_ARCSEC / size
    fwhm_px = psf_fwhm_arcsec / pixel_scale
    # the FFT convolution is circular: a margin of a PSF width keeps light wrapped around the edge
    # out of the cutout
    padded = scipy.fft.next_fast_len(size + 2 * max(4, int(np.ceil(fwhm_px))), real=True)
    while (padded - size) % 2:  # else the cutout's centre is half a pixel off the model's, and the truth's offsets
        padded = scipy.fft.next_fast_len(padded + 1, real=True)
    transfer = _psf_transfer(fwhm_px, padded)
    lo = (padded - size) // 2
    flux = (p.snr * sky_sigma_e() * 2 * (p.size_arcsec / pixel_scale) * np.sqrt(np.pi)).astype(np.float32)
    out = np.empty((len(p), size, size), dtype=np.uint8 if stretch else np.float32)
    for start in range(0, len(p), _BATCH):
        part = p.subset(slice(start, start + _BATCH))
        model = _render_batch(part, padded, pixel_scale)
        model = scipy.fft.irfft2(scipy.fft.rfft2(model) * transfer, s=(padded, padded))[:, lo : lo + size, lo : lo + size]
        model = model * flux[start : start + _BATCH, None, None]
        noise = rng.standard_normal(model.shape, dtype=np.float32)
        image = model + noise * np.sqrt(np.float32(SKY_E + READ_NOISE_E**2) + np.maximum(model, 0))
        out[start : start + _BATCH] = asinh_stretch(image) if stretch else image
    return out


def asinh_stretch(image_e: np.ndarray) -> np.ndarray:
    """uint8 pixels from sky-subtracted electrons with :data:`STRETCH` (fixed, the same for every
    galaxy, so that faint galaxies look faint)."""
    s, lo, hi = STRETCH["softening"], STRETCH["min"], STRETCH["max"]
    x = image_e / np.float32(sky_sigma_e() * s)
    a_lo, a_hi = np.arcsinh(lo / s), np.arcsinh(hi / s)
    # asinh(x) = sign(x) ln(|x| + sqrt(x^2 + 1)): numpy's float32 log and sqrt are vectorised, arcsinh is not
    ax = np.abs(x)
    asinh = np.copysign(np.log(ax + np.sqrt(ax * ax + 1)), x)
    scaled = (asinh - np.float32(a_lo)) * np.float32(255.0 / (a_hi - a_lo)) + np.float32(0.5)
    return np.clip(scaled, 0, 255).astype(np.uint8)  # truncating x + 0.5 rounds, as x >= 0 after the clip
