//! InstantID's face keypoint image (`draw_kps` of its apps, the conditioning image of the
//! IdentityNet ControlNet), reproduced bit-exactly.
//!
//! `draw_kps` joins each eye and mouth corner to the nose with a stick (`cv2.ellipse2Poly` +
//! `cv2.fillConvexPoly` on a float64 canvas, then `* 0.6` truncated to `uint8`) and draws a filled
//! circle of radius 10 on every keypoint (`cv2.circle`). The OpenCV routines are ported from
//! `modules/imgproc/src/drawing.cpp` (`ellipse2Poly`, `FillConvexPoly` with 8-connected edges and
//! no sub-pixel shift, `LineIterator`, `clipLine`, `Circle`), and the float32 arithmetic numpy
//! does on insightface's keypoints is followed (its `** 2` and `** 0.5` call libm's `powf`).
//! Checked pixel by pixel against OpenCV 4.14 and 5.0 by `tests/control_images.rs`.

use std::hint::black_box;

use image::{Rgba, RgbaImage};

use crate::error::{AvatarError, Result};

/// Keypoint colours (RGB): left eye, right eye, nose, left and right mouth corners.
const COLORS: [[u8; 3]; 5] = [
    [255, 0, 0],
    [0, 255, 0],
    [0, 0, 255],
    [255, 255, 0],
    [255, 0, 255],
];
/// The sticks, each drawn in the colour of its first keypoint.
const LIMBS: [(usize, usize); 4] = [(0, 2), (1, 2), (3, 2), (4, 2)];
const STICK_WIDTH: i32 = 4;
const CIRCLE_RADIUS: i32 = 10;
/// Keypoints further out than this are rejected (they keep OpenCV's integer maths in range).
const MAX_COORDINATE: f32 = 1.0e6;
const XY_SHIFT: u32 = 16;
const XY_ONE: i64 = 1 << XY_SHIFT;

/// Checks insightface keypoints: exactly five finite points within ±1e6 pixels.
///
/// # Errors
///
/// [`AvatarError::InvalidOption`] (`face_keypoints`) otherwise.
pub fn check_keypoints(kps: &[(f32, f32)]) -> Result<()> {
    if kps.len() != 5 {
        return Err(AvatarError::invalid(
            "face_keypoints",
            format!(
                "expected 5 keypoints (eyes, nose, mouth corners), got {}",
                kps.len()
            ),
        ));
    }
    if let Some((x, y)) = kps
        .iter()
        .find(|(x, y)| !(x.is_finite() && y.is_finite()) || x.abs().max(y.abs()) > MAX_COORDINATE)
    {
        return Err(AvatarError::invalid(
            "face_keypoints",
            format!("keypoint ({x}, {y}) is not a finite coordinate within ±1e6"),
        ));
    }
    Ok(())
}

/// InstantID's `draw_kps(image, kps)` for a `width` x `height` image: the keypoint image its
/// IdentityNet ControlNet is conditioned on, bit-exactly as OpenCV draws it, opaque.
///
/// `kps` are insightface's five face keypoints (left eye, right eye, nose, left and right mouth
/// corners) in pixels; they may lie outside the image (what falls outside is clipped).
///
/// # Errors
///
/// [`AvatarError::InvalidOption`] (`face_keypoints`) unless there are exactly five finite
/// keypoints within ±1e6 pixels; (`size`) if a side is 0.
pub fn draw_kps(width: u32, height: u32, kps: &[(f32, f32)]) -> Result<RgbaImage> {
    check_keypoints(kps)?;
    if width == 0 || height == 0 {
        return Err(AvatarError::invalid(
            "size",
            format!("{width}x{height} has no pixels"),
        ));
    }

    let mut canvas = Canvas::new(width as usize, height as usize);
    for (a, b) in LIMBS {
        let ((x0, y0), (x1, y1)) = (kps[a], kps[b]);
        // numpy float32 scalars: the mean, the squares and the square root stay in float32
        // (`**` is libm's powf, hence the opaque exponents that keep it from becoming x*x / sqrt).
        let center = (((x0 + x1) / 2.0) as i32, ((y0 + y1) / 2.0) as i32);
        let (dx, dy) = (x0 - x1, y0 - y1);
        let length = (dx.powf(black_box(2.0)) + dy.powf(black_box(2.0))).powf(black_box(0.5));
        let angle = f64::from(dy).atan2(f64::from(dx)).to_degrees();
        let polygon = ellipse_to_poly(center, ((length / 2.0) as i32, STICK_WIDTH), angle as i32);
        canvas.fill_convex_poly(&polygon, COLORS[a]);
    }
    // `(out_img * 0.6).astype(np.uint8)` on the float64 canvas.
    for value in &mut canvas.data {
        *value = (f64::from(*value) * 0.6) as u8;
    }
    for (&(x, y), color) in kps.iter().zip(COLORS) {
        canvas.fill_circle((x as i32, y as i32), CIRCLE_RADIUS, color);
    }

    let mut out = RgbaImage::new(width, height);
    for (pixel, rgb) in out.pixels_mut().zip(canvas.data.chunks_exact(3)) {
        *pixel = Rgba([rgb[0], rgb[1], rgb[2], 255]);
    }
    Ok(out)
}

/// Entry `i` of OpenCV's `SinTable`: `sin(i°)` for `i` in 0..=450, as 7-decimal float literals
/// (exactly symmetric; `SinTable[360]` is `-0.0f`).
fn sin_table(i: usize) -> f32 {
    // OpenCV's literals, verbatim (Rust and C++ both parse them to the nearest f32).
    #[allow(clippy::excessive_precision, clippy::approx_constant)]
    const QUADRANT: [f32; 91] = [
        0.0000000, 0.0174524, 0.0348995, 0.0523360, 0.0697565, 0.0871557, 0.1045285, 0.1218693,
        0.1391731, 0.1564345, 0.1736482, 0.1908090, 0.2079117, 0.2249511, 0.2419219, 0.2588190,
        0.2756374, 0.2923717, 0.3090170, 0.3255682, 0.3420201, 0.3583679, 0.3746066, 0.3907311,
        0.4067366, 0.4226183, 0.4383711, 0.4539905, 0.4694716, 0.4848096, 0.5000000, 0.5150381,
        0.5299193, 0.5446390, 0.5591929, 0.5735764, 0.5877853, 0.6018150, 0.6156615, 0.6293204,
        0.6427876, 0.6560590, 0.6691306, 0.6819984, 0.6946584, 0.7071068, 0.7193398, 0.7313537,
        0.7431448, 0.7547096, 0.7660444, 0.7771460, 0.7880108, 0.7986355, 0.8090170, 0.8191520,
        0.8290376, 0.8386706, 0.8480481, 0.8571673, 0.8660254, 0.8746197, 0.8829476, 0.8910065,
        0.8987940, 0.9063078, 0.9135455, 0.9205049, 0.9271839, 0.9335804, 0.9396926, 0.9455186,
        0.9510565, 0.9563048, 0.9612617, 0.9659258, 0.9702957, 0.9743701, 0.9781476, 0.9816272,
        0.9848078, 0.9876883, 0.9902681, 0.9925462, 0.9945219, 0.9961947, 0.9975641, 0.9986295,
        0.9993908, 0.9998477, 1.0000000,
    ];
    match i {
        0..=90 => QUADRANT[i],
        91..=180 => QUADRANT[180 - i],
        181..=270 => -QUADRANT[i - 180],
        271..=360 => -QUADRANT[360 - i],
        _ => QUADRANT[(i - 360).min(90)],
    }
}

/// OpenCV's `cvRound` of a double: to nearest, ties to even.
fn cv_round(value: f64) -> i32 {
    value.round_ties_even() as i32
}

/// `cv2.ellipse2Poly(center, axes, angle, 0, 360, 1)`: the double-precision points of the
/// `Point2d` overload rounded with `cvRound`, consecutive duplicates dropped.
fn ellipse_to_poly(center: (i32, i32), axes: (i32, i32), angle: i32) -> Vec<(i64, i64)> {
    let mut angle = angle;
    while angle < 0 {
        angle += 360;
    }
    while angle > 360 {
        angle -= 360;
    }
    let angle = angle as usize;
    // `sincos`: float sine and cosine of the rotation.
    let (alpha, beta) = (
        f64::from(sin_table(450 - angle)),
        f64::from(sin_table(angle)),
    );
    let (cx, cy) = (f64::from(center.0), f64::from(center.1));
    let (w, h) = (f64::from(axes.0), f64::from(axes.1));
    let mut points: Vec<(i64, i64)> = Vec::with_capacity(361);
    for i in 0..=360 {
        let x = w * f64::from(sin_table(450 - i));
        let y = h * f64::from(sin_table(i));
        let point = (
            i64::from(cv_round(cx + x * alpha - y * beta)),
            i64::from(cv_round(cy + x * beta + y * alpha)),
        );
        if points.last() != Some(&point) {
            points.push(point);
        }
    }
    if points.len() == 1 {
        let c = (i64::from(center.0), i64::from(center.1));
        points = vec![c, c];
    }
    points
}

/// An RGB canvas, one byte per channel (every value the float64 canvas of `draw_kps` takes is an
/// exact byte).
struct Canvas {
    width: usize,
    height: usize,
    data: Vec<u8>,
}

impl Canvas {
    fn new(width: usize, height: usize) -> Self {
        Canvas {
            width,
            height,
            data: vec![0; width * height * 3],
        }
    }

    fn put(&mut self, x: usize, y: usize, color: [u8; 3]) {
        let i = (y * self.width + x) * 3;
        self.data[i..i + 3].copy_from_slice(&color);
    }

    /// OpenCV's `ICV_HLINE`: pixels `x1..=x2` of row `y` (all inside the canvas).
    fn hline(&mut self, y: usize, x1: usize, x2: usize, color: [u8; 3]) {
        for x in x1..=x2 {
            self.put(x, y, color);
        }
    }

    /// OpenCV's `clipLine(Size, pt1, pt2)`; false when the segment misses the canvas.
    fn clip_line(&self, p1: &mut (i64, i64), p2: &mut (i64, i64)) -> bool {
        let (right, bottom) = (self.width as i64 - 1, self.height as i64 - 1);
        let code = |(x, y): (i64, i64)| {
            i32::from(x < 0)
                + i32::from(x > right) * 2
                + i32::from(y < 0) * 4
                + i32::from(y > bottom) * 8
        };
        let (mut c1, mut c2) = (code(*p1), code(*p2));
        if (c1 & c2) == 0 && (c1 | c2) != 0 {
            if c1 & 12 != 0 {
                let a = if c1 < 8 { 0 } else { bottom };
                p1.0 += ((a - p1.1) as f64 * (p2.0 - p1.0) as f64 / (p2.1 - p1.1) as f64) as i64;
                p1.1 = a;
                c1 = i32::from(p1.0 < 0) + i32::from(p1.0 > right) * 2;
            }
            if c2 & 12 != 0 {
                let a = if c2 < 8 { 0 } else { bottom };
                p2.0 += ((a - p2.1) as f64 * (p2.0 - p1.0) as f64 / (p2.1 - p1.1) as f64) as i64;
                p2.1 = a;
                c2 = i32::from(p2.0 < 0) + i32::from(p2.0 > right) * 2;
            }
            if (c1 & c2) == 0 && (c1 | c2) != 0 {
                if c1 != 0 {
                    let a = if c1 == 1 { 0 } else { right };
                    p1.1 +=
                        ((a - p1.0) as f64 * (p2.1 - p1.1) as f64 / (p2.0 - p1.0) as f64) as i64;
                    p1.0 = a;
                    c1 = 0;
                }
                if c2 != 0 {
                    let a = if c2 == 1 { 0 } else { right };
                    p2.1 +=
                        ((a - p2.0) as f64 * (p2.1 - p1.1) as f64 / (p2.0 - p1.0) as f64) as i64;
                    p2.0 = a;
                    c2 = 0;
                }
            }
        }
        (c1 | c2) == 0
    }

    /// OpenCV's `Line` with 8-connectivity (a `LineIterator` from left to right, clipped).
    fn line(&mut self, mut p1: (i64, i64), mut p2: (i64, i64), color: [u8; 3]) {
        let (w, h) = (self.width as i64, self.height as i64);
        let inside = |(x, y): (i64, i64)| (0..w).contains(&x) && (0..h).contains(&y);
        let visible = (inside(p1) && inside(p2)) || self.clip_line(&mut p1, &mut p2);
        if !visible {
            return;
        }
        let (mut dx, mut dy) = (p2.0 - p1.0, p2.1 - p1.1);
        if dx < 0 {
            // Left to right: start from the other end.
            (dx, dy) = (-dx, -dy);
            p1 = p2;
        }
        let step_y = if dy < 0 { -1 } else { 1 };
        dy = dy.abs();
        // Major and minor steps.
        let (major, minor) = if dy > dx {
            (dx, dy) = (dy, dx);
            ((0, step_y), (1, 0))
        } else {
            ((1, 0), (0, step_y))
        };
        let (mut err, plus_delta, minus_delta) = (dx - 2 * dy, 2 * dx, -2 * dy);
        let (mut x, mut y) = p1;
        for _ in 0..=dx {
            if inside((x, y)) {
                self.put(x as usize, y as usize, color);
            }
            let minor_step = err < 0;
            err += minus_delta + if minor_step { plus_delta } else { 0 };
            x += major.0 + if minor_step { minor.0 } else { 0 };
            y += major.1 + if minor_step { minor.1 } else { 0 };
        }
    }

    /// OpenCV's `FillConvexPoly` with `line_type` 8 and `shift` 0: the outline as 8-connected
    /// lines, then a scan fill between two 16.16 fixed-point edges.
    fn fill_convex_poly(&mut self, v: &[(i64, i64)], color: [u8; 3]) {
        let npts = v.len();
        if npts == 0 {
            return;
        }
        let delta1 = XY_ONE >> 1;
        let delta2 = XY_ONE >> 1;
        let (mut xmin, mut xmax, mut ymin, mut ymax) = (v[0].0, v[0].0, v[0].1, v[0].1);
        let mut imin = 0;
        let mut p0 = v[npts - 1];
        for (i, &p) in v.iter().enumerate() {
            if p.1 < ymin {
                ymin = p.1;
                imin = i;
            }
            ymax = ymax.max(p.1);
            xmax = xmax.max(p.0);
            xmin = xmin.min(p.0);
            self.line(p0, p, color);
            p0 = p;
        }
        let (w, h) = (self.width as i64, self.height as i64);
        if npts < 3 || xmax < 0 || ymax < 0 || xmin >= w || ymin >= h {
            return;
        }
        let ymax = ymax.min(h - 1);

        #[derive(Clone, Copy)]
        struct Edge {
            idx: usize,
            di: usize,
            x: i64,
            dx: i64,
            ye: i64,
        }
        let mut edge = [
            Edge {
                idx: imin,
                di: 1,
                x: -XY_ONE,
                dx: 0,
                ye: ymin,
            },
            Edge {
                idx: imin,
                di: npts - 1,
                x: -XY_ONE,
                dx: 0,
                ye: ymin,
            },
        ];
        let mut edges = npts as i64;
        let mut y = ymin;
        loop {
            for e in &mut edge {
                if y >= e.ye {
                    let mut idx0 = e.idx;
                    let mut idx = (idx0 + e.di) % npts;
                    // `for (; edges-- > 0; )`
                    loop {
                        let more = edges > 0;
                        edges -= 1;
                        if !more {
                            break;
                        }
                        let ty = v[idx].1;
                        if ty > y {
                            let (xs, xe) = (v[idx0].0 << XY_SHIFT, v[idx].0 << XY_SHIFT);
                            e.ye = ty;
                            e.dx = ((xe - xs) * 2 + (ty - y)) / (2 * (ty - y));
                            e.x = xs;
                            e.idx = idx;
                            break;
                        }
                        idx0 = idx;
                        idx = (idx + e.di) % npts;
                    }
                }
            }
            if edges < 0 {
                break;
            }
            if y >= 0 {
                let (left, right) = if edge[0].x > edge[1].x {
                    (1, 0)
                } else {
                    (0, 1)
                };
                let mut x1 = (edge[left].x + delta1) >> XY_SHIFT;
                let mut x2 = (edge[right].x + delta2) >> XY_SHIFT;
                if x2 >= 0 && x1 < w {
                    x1 = x1.max(0);
                    x2 = x2.min(w - 1);
                    if x1 <= x2 {
                        self.hline(y as usize, x1 as usize, x2 as usize, color);
                    }
                }
            }
            edge[0].x += edge[0].dx;
            edge[1].x += edge[1].dx;
            y += 1;
            if y > ymax {
                break;
            }
        }
    }

    /// OpenCV's `Circle(img, center, radius, color, fill = 1)`: a filled midpoint circle,
    /// clipped to the canvas.
    fn fill_circle(&mut self, center: (i32, i32), radius: i32, color: [u8; 3]) {
        let (w, h) = (self.width as i64, self.height as i64);
        let (cx, cy) = (i64::from(center.0), i64::from(center.1));
        let radius = i64::from(radius);
        let (mut err, mut dx, mut dy, mut plus, mut minus) =
            (0i64, radius, 0i64, 1i64, 2 * radius - 1);
        while dx >= dy {
            let (y11, y12, y21, y22) = (cy - dy, cy + dy, cy - dx, cy + dx);
            let (x11, x12, x21, x22) = (cx - dx, cx + dx, cx - dy, cx + dy);
            // The clipped branch of OpenCV's routine; when the circle is inside it clips nothing
            // and fills the same spans.
            if x11 < w && x12 >= 0 && y21 < h && y22 >= 0 {
                let (x11, x12) = (x11.max(0), x12.min(w - 1));
                for row in [y11, y12] {
                    if (0..h).contains(&row) {
                        self.hline(row as usize, x11 as usize, x12 as usize, color);
                    }
                }
                if x21 < w && x22 >= 0 {
                    let (x21, x22) = (x21.max(0), x22.min(w - 1));
                    for row in [y21, y22] {
                        if (0..h).contains(&row) {
                            self.hline(row as usize, x21 as usize, x22 as usize, color);
                        }
                    }
                }
            }
            dy += 1;
            err += plus;
            plus += 2;
            if err > 0 {
                err -= minus;
                dx -= 1;
                minus -= 2;
            }
        }
    }
}
