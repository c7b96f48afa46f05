use std::fmt;
use std::str::FromStr;

use crate::error::AvatarError;

/// An sRGB colour with alpha, parsed from `#RRGGBB` or `#RRGGBBAA` (the `#` is optional).
///
/// ```
/// use avatar_core::imaging::Color;
/// let c: Color = "#ff8000".parse().unwrap();
/// assert_eq!(c, Color::rgba(255, 128, 0, 255));
/// assert!("#12345".parse::<Color>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Color(pub [u8; 4]);

impl Color {
    /// Opaque white, the default background.
    pub const WHITE: Color = Color([255, 255, 255, 255]);

    /// A colour from its components.
    pub const fn rgba(r: u8, g: u8, b: u8, a: u8) -> Self {
        Color([r, g, b, a])
    }
}

impl FromStr for Color {
    type Err = AvatarError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s.trim().strip_prefix('#').unwrap_or(s.trim());
        let bad = || {
            AvatarError::invalid(
                "bg_color",
                format!("{s:?} is not a colour; use #RRGGBB or #RRGGBBAA"),
            )
        };
        if !(hex.len() == 6 || hex.len() == 8) || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| bad());
        let alpha = if hex.len() == 8 { byte(6)? } else { 255 };
        Ok(Color([byte(0)?, byte(2)?, byte(4)?, alpha]))
    }
}

impl fmt::Display for Color {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [r, g, b, a] = self.0;
        if a == 255 {
            write!(f, "#{r:02x}{g:02x}{b:02x}")
        } else {
            write!(f, "#{r:02x}{g:02x}{b:02x}{a:02x}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms_and_rejects_junk() {
        assert_eq!(
            "00FF7f".parse::<Color>().unwrap(),
            Color::rgba(0, 255, 127, 255)
        );
        assert_eq!(
            "#01020304".parse::<Color>().unwrap(),
            Color::rgba(1, 2, 3, 4)
        );
        for bad in ["", "#", "red", "#1234567", "#gg0000", "#+1+2+3"] {
            let err = bad.parse::<Color>().unwrap_err().to_string();
            assert!(err.contains("bg_color"), "{err}");
        }
        assert_eq!(Color::rgba(1, 2, 3, 4).to_string(), "#01020304");
        assert_eq!(Color::WHITE.to_string(), "#ffffff");
    }
}
