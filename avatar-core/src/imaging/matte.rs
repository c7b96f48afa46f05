use std::collections::VecDeque;

use image::RgbaImage;

use super::Color;

/// Tuning of [`key_background`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MatteOptions {
    /// Colour distance (Euclidean, 0-441) under which a pixel connected to the border is background.
    pub tolerance: f32,
    /// Width of the soft ramp above `tolerance` over which edge pixels fade in (anti-aliasing).
    pub feather: f32,
}

impl Default for MatteOptions {
    fn default() -> Self {
        MatteOptions {
            tolerance: 24.0,
            feather: 48.0,
        }
    }
}

/// Derives an alpha channel for an image drawn on a plain background (3-channel models).
///
/// The background colour is the per-channel median of the border pixels. Background is what a
/// flood fill from the border reaches through pixels within `tolerance` of that colour, so a
/// background-coloured region enclosed by the avatar (the white of an eye) stays opaque. Pixels
/// bordering the background get a soft alpha from their distance to the background colour, and
/// their colour is un-mixed from it, so anti-aliased edges stay smooth on any new background.
pub fn key_background(image: &RgbaImage, options: MatteOptions) -> RgbaImage {
    let (w, h) = image.dimensions();
    let (wu, hu) = (w as usize, h as usize);
    if w == 0 || h == 0 {
        return image.clone();
    }
    let background = border_median(image);
    let distance = |p: &image::Rgba<u8>| -> f32 {
        let d: f32 = (0..3).map(|c| (p[c] as f32 - background[c]).powi(2)).sum();
        d.sqrt()
    };
    let mut is_background = vec![false; wu * hu];
    let mut queue = VecDeque::new();
    let seed = |x: u32, y: u32, queue: &mut VecDeque<(u32, u32)>, marks: &mut Vec<bool>| {
        let i = y as usize * wu + x as usize;
        if !marks[i] && distance(image.get_pixel(x, y)) <= options.tolerance {
            marks[i] = true;
            queue.push_back((x, y));
        }
    };
    for x in 0..w {
        seed(x, 0, &mut queue, &mut is_background);
        seed(x, h - 1, &mut queue, &mut is_background);
    }
    for y in 0..h {
        seed(0, y, &mut queue, &mut is_background);
        seed(w - 1, y, &mut queue, &mut is_background);
    }
    while let Some((x, y)) = queue.pop_front() {
        let neighbours = [
            (x.wrapping_sub(1), y),
            (x + 1, y),
            (x, y.wrapping_sub(1)),
            (x, y + 1),
        ];
        for (nx, ny) in neighbours {
            if nx < w && ny < h {
                seed(nx, ny, &mut queue, &mut is_background);
            }
        }
    }
    let touches_background = |x: u32, y: u32| -> bool {
        (-1i64..=1).any(|dy| {
            (-1i64..=1).any(|dx| {
                let (nx, ny) = (x as i64 + dx, y as i64 + dy);
                nx >= 0
                    && ny >= 0
                    && nx < w as i64
                    && ny < h as i64
                    && is_background[ny as usize * wu + nx as usize]
            })
        })
    };
    let mut out = image.clone();
    for (x, y, pixel) in out.enumerate_pixels_mut() {
        let i = y as usize * wu + x as usize;
        if is_background[i] {
            *pixel = image::Rgba([0, 0, 0, 0]);
        } else if touches_background(x, y) {
            let alpha = ((distance(pixel) - options.tolerance) / options.feather).clamp(0.0, 1.0);
            if alpha <= 0.0 {
                *pixel = image::Rgba([0, 0, 0, 0]);
                continue;
            }
            for c in 0..3 {
                let unmixed = (pixel[c] as f32 - (1.0 - alpha) * background[c]) / alpha;
                pixel[c] = unmixed.round().clamp(0.0, 255.0) as u8;
            }
            pixel[3] = (alpha * pixel[3] as f32).round() as u8;
        }
    }
    out
}

fn border_median(image: &RgbaImage) -> [f32; 3] {
    let (w, h) = image.dimensions();
    let mut channels: [Vec<u8>; 3] = Default::default();
    let mut push = |x: u32, y: u32| {
        let p = image.get_pixel(x, y);
        for c in 0..3 {
            channels[c].push(p[c]);
        }
    };
    for x in 0..w {
        push(x, 0);
        push(x, h - 1);
    }
    for y in 1..h.saturating_sub(1) {
        push(0, y);
        push(w - 1, y);
    }
    channels.map(|mut values| {
        values.sort_unstable();
        values[values.len() / 2] as f32
    })
}

/// Composites `image` over a solid `background` ("source over"), giving an image whose alpha is
/// the background's (opaque for an opaque background).
pub fn composite_over(image: &RgbaImage, background: Color) -> RgbaImage {
    let [br, bg, bb, ba] = background.0.map(|v| v as f32 / 255.0);
    let mut out = image.clone();
    for pixel in out.pixels_mut() {
        let a = pixel[3] as f32 / 255.0;
        let out_a = a + ba * (1.0 - a);
        let mix = |c: u8, b: f32| -> u8 {
            if out_a <= 0.0 {
                return 0;
            }
            ((c as f32 / 255.0 * a + b * ba * (1.0 - a)) / out_a * 255.0)
                .round()
                .clamp(0.0, 255.0) as u8
        };
        *pixel = image::Rgba([
            mix(pixel[0], br),
            mix(pixel[1], bg),
            mix(pixel[2], bb),
            (out_a * 255.0).round() as u8,
        ]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disc of `fg` on `bg` with a 1-pixel anti-aliased rim, plus a `bg`-coloured "eye" inside.
    fn disc(size: u32, fg: [u8; 3], bg: [u8; 3]) -> (RgbaImage, Vec<f32>) {
        let c = size as f32 / 2.0;
        let r = size as f32 * 0.35;
        let mut mask = Vec::new();
        let img = RgbaImage::from_fn(size, size, |x, y| {
            let d = ((x as f32 + 0.5 - c).powi(2) + (y as f32 + 0.5 - c).powi(2)).sqrt();
            let coverage = (r - d + 0.5).clamp(0.0, 1.0);
            let eye =
                ((x as f32 + 0.5 - c).powi(2) + (y as f32 + 0.5 - c).powi(2)).sqrt() < r * 0.3;
            mask.push(coverage);
            let colour = if eye { bg } else { fg };
            let mix = |i: usize| {
                (colour[i] as f32 * coverage + bg[i] as f32 * (1.0 - coverage)).round() as u8
            };
            image::Rgba([mix(0), mix(1), mix(2), 255])
        });
        (img, mask)
    }

    #[test]
    fn keyed_alpha_matches_the_known_mask() {
        for (fg, bg) in [
            ([200, 40, 40], [255, 255, 255]),
            ([30, 30, 30], [120, 200, 255]),
        ] {
            let (img, mask) = disc(96, fg, bg);
            let keyed = key_background(&img, MatteOptions::default());
            let mut error = 0.0f32;
            for (p, m) in keyed.pixels().zip(&mask) {
                error += (p[3] as f32 / 255.0 - m).abs();
            }
            let area: f32 = mask.iter().sum();
            assert!(
                error / area < 0.05,
                "alpha error {} of area {}",
                error,
                area
            );
            // Fully inside and outside are exact.
            assert_eq!(keyed.get_pixel(0, 0)[3], 0);
            assert_eq!(keyed.get_pixel(48, 20)[3], 255);
            // The enclosed background-coloured eye is not punched out.
            assert_eq!(keyed.get_pixel(48, 48)[3], 255);
            assert_eq!(&keyed.get_pixel(48, 48).0[..3], &bg);
        }
    }

    #[test]
    fn plain_image_keys_to_fully_transparent_and_composites_back() {
        let img = RgbaImage::from_pixel(8, 8, image::Rgba([10, 20, 30, 255]));
        let keyed = key_background(&img, MatteOptions::default());
        assert!(keyed.pixels().all(|p| p[3] == 0));
        let back = composite_over(&keyed, Color::rgba(1, 2, 3, 255));
        assert!(back.pixels().all(|p| p.0 == [1, 2, 3, 255]));
    }

    #[test]
    fn composite_is_source_over() {
        let img = RgbaImage::from_pixel(1, 1, image::Rgba([255, 0, 0, 128]));
        let out = composite_over(&img, Color::WHITE);
        let p = out.get_pixel(0, 0);
        assert_eq!(p[3], 255);
        assert_eq!(p[0], 255);
        assert!((p[1] as i32 - 127).abs() <= 1);
    }
}
