//! The timeline picture: per scenario, one strip per stack (kubeha, keepalived + HAProxy) with a lane per
//! master (when it holds the VIP), a lane for the client's TCP probes (green: every probe in that pixel
//! column connected; red: at least one failed), and the moments the fault was applied and removed. Drawn
//! into an RGB raster with an 8×8 bitmap font and written as PNG.

use std::io::BufWriter;
use std::path::Path;

use super::measure::Window;
use super::record::Log;
use crate::error::{Error, IoContext as _, Result};
use crate::net::NODES;

type Rgb = [u8; 3];
const WHITE: Rgb = [255, 255, 255];
const BLACK: Rgb = [0, 0, 0];
const GRID: Rgb = [225, 225, 225];
const LANE: Rgb = [244, 244, 244];
const HOLDS: Rgb = [40, 100, 200];
const TWO: Rgb = [230, 140, 0];
const OK: Rgb = [60, 170, 80];
const FAIL: Rgb = [215, 40, 40];
const RESTORE: Rgb = [120, 120, 120];

/// One strip: a stack's run of a scenario.
#[derive(Debug)]
pub struct Strip<'a> {
    /// The stack's name, left of the strip.
    pub label: String,
    /// The run's moments.
    pub window: Window,
    /// The log of the run it belongs to.
    pub log: &'a Log,
}

/// One block: a scenario and its strips, drawn on one time scale.
#[derive(Debug)]
pub struct Block<'a> {
    /// The scenario's title.
    pub title: String,
    /// Its strips.
    pub strips: Vec<Strip<'a>>,
}

const WIDTH: usize = 1400;
const LABEL: usize = 220;
const PLOT: usize = WIDTH - LABEL - 20;
const LANE_H: usize = 7;
const STRIP_H: usize = 4 * (LANE_H + 1) + 6;

/// Draws `blocks` and writes the PNG to `path`.
pub fn write(path: &Path, title: &str, blocks: &[Block<'_>]) -> Result<()> {
    let height = 40 + blocks.iter().map(|b| 30 + b.strips.len() * STRIP_H + 14).sum::<usize>();
    let mut c = Canvas::new(WIDTH, height);
    c.text(10, 8, title, BLACK);
    legend(&mut c, 10, 22);
    let mut y = 40;
    for block in blocks {
        c.text(10, y + 8, &block.title, BLACK);
        y += 22;
        let span = block.strips.iter().map(|s| s.window.end - s.window.start).fold(1.0, f64::max);
        let px_per_s = PLOT as f64 / span;
        let tick = [1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0].into_iter().find(|t| t * px_per_s >= 45.0).unwrap_or(120.0);
        let strips_h = block.strips.len() * STRIP_H;
        let mut t = 0.0;
        while t <= span {
            let x = LABEL + (t * px_per_s) as usize;
            c.rect(x, y, 1, strips_h, GRID);
            c.text(x.saturating_sub(4), y + strips_h + 2, &format!("{t:.0}s"), BLACK);
            t += tick;
        }
        for strip in &block.strips {
            draw_strip(&mut c, y, strip, px_per_s);
            y += STRIP_H;
        }
        y += 14;
    }
    c.save(path)
}

fn legend(c: &mut Canvas, x: usize, y: usize) {
    let mut x = x;
    for (color, what) in [
        (HOLDS, "holds the VIP"),
        (TWO, "VIP on two masters"),
        (OK, "probes connect"),
        (FAIL, "a probe failed"),
        (BLACK, "fault"),
        (RESTORE, "fault removed"),
    ] {
        c.rect(x, y, 10, 8, color);
        c.text(x + 14, y, what, BLACK);
        x += 14 + 8 * what.len() + 20;
    }
}

fn draw_strip(c: &mut Canvas, y: usize, s: &Strip<'_>, px_per_s: f64) {
    c.text(10, y + 2, &s.label, BLACK);
    for (i, n) in NODES.iter().enumerate() {
        c.text(LABEL - 28, y + i * (LANE_H + 1), &n.name(), RESTORE);
    }
    c.text(LABEL - 52, y + 3 * (LANE_H + 1), "probe", RESTORE);
    let columns = ((s.window.end - s.window.start) * px_per_s).ceil() as usize;
    let columns = columns.min(PLOT);
    // Probe results per pixel column: (any connected, any failed).
    let mut probes = vec![(false, false); columns + 1];
    for (t, ok) in &s.log.connects {
        if *t < s.window.start || *t > s.window.end {
            continue;
        }
        let col = (((t - s.window.start) * px_per_s) as usize).min(columns);
        if *ok { probes[col].0 = true } else { probes[col].1 = true }
    }
    // A column between two probes (10 ms apart, wider than a pixel at a short window) shows the one before.
    let fill = (0.03 * px_per_s).ceil() as usize;
    let mut empty_run = 0;
    for col in 1..probes.len() {
        if probes[col] == (false, false) && empty_run < fill {
            probes[col] = probes[col - 1];
            empty_run += 1;
        } else if probes[col] != (false, false) {
            empty_run = 0;
        }
    }
    for (col, probe) in probes.iter().take(columns).enumerate() {
        let t = s.window.start + (col as f64 + 0.5) / px_per_s;
        let mask = s.log.holders_at(t);
        let x = LABEL + col;
        for i in 0..NODES.len() {
            let color = match (mask & (1 << i) != 0, mask.count_ones() > 1) {
                (true, true) => TWO,
                (true, false) => HOLDS,
                _ => LANE,
            };
            c.rect(x, y + i * (LANE_H + 1), 1, LANE_H, color);
        }
        let color = match *probe {
            (_, true) => FAIL,
            (true, false) => OK,
            _ => LANE,
        };
        c.rect(x, y + 3 * (LANE_H + 1), 1, LANE_H, color);
    }
    let at = |t: f64| LABEL + ((t - s.window.start) * px_per_s) as usize;
    c.rect(at(s.window.fault), y, 2, 4 * (LANE_H + 1), BLACK);
    if let Some(r) = s.window.restore {
        c.rect(at(r), y, 2, 4 * (LANE_H + 1), RESTORE);
    }
}

struct Canvas {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

impl Canvas {
    fn new(width: usize, height: usize) -> Self {
        Self { width, height, pixels: WHITE.repeat(width * height) }
    }

    fn rect(&mut self, x: usize, y: usize, w: usize, h: usize, color: Rgb) {
        for yy in y..(y + h).min(self.height) {
            for xx in x..(x + w).min(self.width) {
                let i = (yy * self.width + xx) * 3;
                self.pixels[i..i + 3].copy_from_slice(&color);
            }
        }
    }

    fn text(&mut self, x: usize, y: usize, text: &str, color: Rgb) {
        use font8x8::UnicodeFonts as _;
        for (i, ch) in text.chars().enumerate() {
            let glyph = font8x8::BASIC_FONTS.get(ch).unwrap_or([0; 8]);
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits & (1 << col) != 0 {
                        self.rect(x + i * 8 + col, y + row, 1, 1, color);
                    }
                }
            }
        }
    }

    fn save(&self, path: &Path) -> Result<()> {
        let file = std::fs::File::create(path).ctx(|| format!("creating {}", path.display()))?;
        let mut encoder = png::Encoder::new(BufWriter::new(file), self.width as u32, self.height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let bad = |e: png::EncodingError| Error::Usage(format!("writing {}: {e}", path.display()));
        let mut writer = encoder.write_header().map_err(bad)?;
        writer.write_image_data(&self.pixels).map_err(bad)?;
        writer.finish().map_err(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_picture_is_a_png_with_the_holders_and_probes_drawn() {
        let log = Log {
            connects: vec![(0.5, true), (1.2, false), (1.6, true)],
            holders: vec![(0.0, 0b001), (1.3, 0b011), (1.5, 0b010)],
            ..Log::default()
        };
        let w = Window { start: 0.0, fault: 1.0, restore: Some(2.0), end: 3.0 };
        let dir = std::env::temp_dir().join(format!("kubeha-picture-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.png");
        let block =
            Block { title: "1. a fault".into(), strips: vec![Strip { label: "kubeha".into(), window: w, log: &log }] };
        write(&path, "test", &[block]).unwrap();
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.width as usize, WIDTH);
        let px = |x: usize, y: usize| -> Rgb {
            let i = (y * info.width as usize + x) * 3;
            [buf[i], buf[i + 1], buf[i + 2]]
        };
        let y0 = 40 + 22;
        let col = |t: f64| LABEL + (t * PLOT as f64 / 3.0) as usize;
        assert_eq!(px(col(0.6), y0 + 1), HOLDS, "n1 holds before the fault");
        assert_eq!(px(col(1.4), y0 + 1), TWO, "two holders");
        assert_eq!(px(col(2.5), y0 + LANE_H + 2), HOLDS, "n2 holds at the end");
        assert_eq!(px(col(1.2), y0 + 3 * (LANE_H + 1) + 1), FAIL, "the failed probe");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
