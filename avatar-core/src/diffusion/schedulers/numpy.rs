//! The few numpy float64 routines diffusers builds its inference schedules with, reproduced
//! operation for operation (so timesteps round the same way), plus the shared sigma helpers.

/// `np.linspace(start, stop, num, endpoint)`.
pub(crate) fn linspace(start: f64, stop: f64, num: usize, endpoint: bool) -> Vec<f64> {
    let div = if endpoint { num.saturating_sub(1) } else { num };
    let delta = stop - start;
    let mut y: Vec<f64> = (0..num).map(|i| i as f64).collect();
    if div > 0 {
        let step = delta / div as f64;
        for v in &mut y {
            *v = if step == 0.0 {
                *v / div as f64 * delta
            } else {
                *v * step
            };
        }
    } else {
        y.iter_mut().for_each(|v| *v *= delta);
    }
    y.iter_mut().for_each(|v| *v += start);
    if endpoint && num > 1 {
        y[num - 1] = stop;
    }
    y
}

/// `np.arange(start, stop, step)` for a float `step` (numpy fills `start + i·((start+step) − start)`).
pub(crate) fn arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil().max(0.0) as usize;
    let delta = (start + step) - start;
    (0..len)
        .map(|i| match i {
            0 => start,
            1 => start + step,
            _ => start + i as f64 * delta,
        })
        .collect()
}

/// `np.interp(x, arange(len(fp)), fp)`: linear interpolation in a table indexed by timestep.
pub(crate) fn interp_table(x: f64, fp: &[f32]) -> f64 {
    let last = fp.len() - 1;
    if x.is_nan() {
        return x;
    }
    if x <= 0.0 {
        return fp[0] as f64;
    }
    if x >= last as f64 {
        return fp[last] as f64;
    }
    let j = x.floor() as usize;
    if j as f64 == x {
        return fp[j] as f64;
    }
    let (y0, y1) = (fp[j] as f64, fp[j + 1] as f64);
    let slope = (y1 - y0) / 1.0;
    slope * (x - j as f64) + y0
}

/// `np.round` (half to even).
pub(crate) fn round(x: f64) -> f64 {
    x.round_ties_even()
}

/// `np.log` of a float32 sigma table (kept in float32 like numpy does).
pub(crate) fn log_table(sigmas: &[f32]) -> Vec<f32> {
    sigmas.iter().map(|s| s.ln()).collect()
}

/// diffusers' `_sigma_to_t`: the fractional training timestep whose sigma is `sigma`, by linear
/// interpolation of log σ in the (float32) table `log_sigmas`.
pub(crate) fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    // argmax of cumsum(dists >= 0): the first index where the running count peaks.
    let (mut count, mut best, mut low) = (0usize, 0usize, 0usize);
    for (i, &l) in log_sigmas.iter().enumerate() {
        if log_sigma - l as f64 >= 0.0 {
            count += 1;
        }
        if count > best {
            best = count;
            low = i;
        }
    }
    let low = low.min(log_sigmas.len() - 2);
    let (lo, hi) = (log_sigmas[low], log_sigmas[low + 1]);
    // `low - high` is a float32 subtraction in numpy; the rest is float64.
    let w = ((lo as f64 - log_sigma) / (lo - hi) as f64).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

/// Karras et al. (2022) sigmas: `(σ_max^(1/ρ) + ramp·(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ`, ρ = 7.
pub(crate) fn karras_sigmas(sigma_min: f64, sigma_max: f64, num: usize) -> Vec<f64> {
    let rho = 7.0f64;
    let min_inv_rho = sigma_min.powf(1.0 / rho);
    let max_inv_rho = sigma_max.powf(1.0 / rho);
    linspace(0.0, 1.0, num, true)
        .into_iter()
        .map(|r| (max_inv_rho + r * (min_inv_rho - max_inv_rho)).powf(rho))
        .collect()
}

/// Timesteps (descending) from `timestep_spacing`, as numpy computes them before the cast to
/// the timestep dtype: `leading` `(arange(n)·(T//n)).round()[::-1] + offset`, `trailing`
/// `round(arange(T, 0, −T/n)) − 1`, `linspace` `linspace(0, T−1, n)[::-1]` (not rounded here).
pub(crate) fn spaced_timesteps(
    spacing: super::config::TimestepSpacing,
    num_train: usize,
    n: usize,
    steps_offset: usize,
) -> Vec<f64> {
    use super::config::TimestepSpacing;
    match spacing {
        TimestepSpacing::Leading => {
            let ratio = num_train / n;
            (0..n)
                .rev()
                .map(|i| (i * ratio) as f64 + steps_offset as f64)
                .collect()
        }
        TimestepSpacing::Trailing => arange(num_train as f64, 0.0, -(num_train as f64 / n as f64))
            .into_iter()
            .map(|t| round(t) - 1.0)
            .collect(),
        TimestepSpacing::Linspace => {
            let mut t = linspace(0.0, (num_train - 1) as f64, n, true);
            t.reverse();
            t
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_reference_values() {
        assert_eq!(linspace(0.0, 999.0, 3, true), vec![0.0, 499.5, 999.0]);
        assert_eq!(linspace(0.0, 50.0, 4, false), vec![0.0, 12.5, 25.0, 37.5]);
        assert_eq!(linspace(0.0, 1.0, 1, true), vec![0.0]);
        let a = arange(1000.0, 0.0, -1000.0 / 3.0);
        assert_eq!(a.len(), 3);
        assert_eq!(round(a[1]), 667.0);
        assert_eq!(round(2.5), 2.0);
        assert_eq!(interp_table(1.5, &[0.0, 1.0, 3.0]), 2.0);
    }
}
