//! The CLIP byte-level BPE tokenizer of Stable Diffusion, as transformers' `CLIPTokenizer` runs it:
//! special tokens matched first, then NFC, whitespace collapsed, lowercase, CLIP's split pattern,
//! GPT-2's byte-to-character table, and BPE with a `</w>` end-of-word suffix; prompts are wrapped
//! in `<|startoftext|>` / `<|endoftext|>`, truncated to 77 and padded.
//!
//! Hand-rolled (about 200 lines) rather than the `tokenizers` crate, whose dependencies would
//! change the feature set of crates burn is built with and force a full rebuild; parity with
//! transformers is tested on the real 49,408-token vocabulary.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::Mutex;

use regex::Regex;
use unicode_normalization::UnicodeNormalization;

use crate::error::{AvatarError, Result};

/// Start-of-text token.
pub const BOS: &str = "<|startoftext|>";
/// End-of-text token.
pub const EOS: &str = "<|endoftext|>";
/// Sequence length of Stable Diffusion's text encoders.
pub const MAX_LENGTH: usize = 77;
/// CLIP's pre-tokenisation pattern (applied to normalised, lowercased text).
const PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
/// Merges used by the real vocabulary (`49152 - 256 - 2`).
const CLIP_MERGES: usize = 48_894;

/// GPT-2's reversible byte -> printable character table.
fn bytes_to_unicode() -> Vec<(u8, char)> {
    let mut bytes: Vec<u32> = (u32::from(b'!')..=u32::from(b'~'))
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars = bytes.clone();
    let mut extra = 0;
    for b in 0..256u32 {
        if !bytes.contains(&b) {
            bytes.push(b);
            chars.push(256 + extra);
            extra += 1;
        }
    }
    bytes
        .into_iter()
        .zip(chars)
        .map(|(b, c)| (b as u8, char::from_u32(c).expect("valid scalar")))
        .collect()
}

/// OpenAI CLIP's BPE merges (MIT), as shipped in open_clip (`assets/README.md`).
const OPENAI_BPE_GZ: &[u8] = include_bytes!("../../assets/bpe_simple_vocab_16e6.txt.gz");

/// A CLIP BPE tokenizer.
#[derive(Debug)]
pub struct ClipTokenizer {
    vocab: HashMap<String, u32>,
    ranks: HashMap<(String, String), usize>,
    byte_chars: [char; 256],
    pattern: Regex,
    specials: Regex,
    special_ids: HashMap<String, u32>,
    bos: u32,
    eos: u32,
    pad: u32,
    cache: Mutex<HashMap<String, Vec<u32>>>,
}

impl ClipTokenizer {
    /// From a vocabulary (token -> id) and merges in rank order; `pad_token` is the padding token
    /// (`<|endoftext|>` for SD1.5 and SDXL's first tokenizer, `!` for SDXL's second).
    pub fn new(
        vocab: HashMap<String, u32>,
        merges: Vec<(String, String)>,
        pad_token: &str,
    ) -> Result<Self> {
        let id = |token: &str| {
            vocab.get(token).copied().ok_or_else(|| {
                AvatarError::Weights(format!("CLIP tokenizer: the vocabulary lacks {token:?}"))
            })
        };
        let (bos, eos, pad) = (id(BOS)?, id(EOS)?, id(pad_token)?);
        let mut byte_chars = ['\0'; 256];
        for (b, c) in bytes_to_unicode() {
            byte_chars[b as usize] = c;
        }
        let ranks = merges
            .into_iter()
            .enumerate()
            .map(|(i, m)| (m, i))
            .collect();
        Ok(ClipTokenizer {
            vocab,
            ranks,
            byte_chars,
            pattern: Regex::new(PATTERN).expect("valid pattern"),
            // transformers registers the special tokens (and a pad token such as SDXL's `!`) as
            // added tokens, matched in the raw text before anything else.
            specials: Regex::new(&format!(
                "{}|{}|{}",
                regex::escape(BOS),
                regex::escape(EOS),
                regex::escape(pad_token)
            ))
            .expect("escaped pattern"),
            special_ids: [
                (BOS.to_owned(), bos),
                (EOS.to_owned(), eos),
                (pad_token.to_owned(), pad),
            ]
            .into_iter()
            .collect(),
            bos,
            eos,
            pad,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Loads a transformers tokenizer folder (`vocab.json`, `merges.txt`, and the pad token from
    /// `special_tokens_map.json` or `tokenizer_config.json` when present).
    pub fn load(dir: &Path) -> Result<Self> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|e| AvatarError::io(path, e))
        };
        let vocab: HashMap<String, u32> = serde_json::from_str(&read("vocab.json")?)
            .map_err(|e| AvatarError::Weights(format!("{}/vocab.json: {e}", dir.display())))?;
        let merges = read("merges.txt")?
            .lines()
            .filter(|line| !line.starts_with("#version") && !line.trim().is_empty())
            .map(|line| {
                line.split_once(' ')
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .ok_or_else(|| {
                        AvatarError::Weights(format!(
                            "{}/merges.txt: bad line {line:?}",
                            dir.display()
                        ))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let pad = ["special_tokens_map.json", "tokenizer_config.json"]
            .iter()
            .filter_map(|name| read(name).ok())
            .filter_map(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .find_map(|json| match &json["pad_token"] {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
                _ => None,
            })
            .unwrap_or_else(|| EOS.to_owned());
        Self::new(vocab, merges, &pad)
    }

    /// Builds the real 49,408-token vocabulary from OpenAI's / open_clip's
    /// `bpe_simple_vocab_16e6.txt.gz`.
    pub fn from_bpe_gz(path: &Path, pad: &str) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| AvatarError::io(path, e))?;
        Self::from_bpe_gz_bytes(&bytes, pad)
            .map_err(|e| AvatarError::Weights(format!("{}: {e}", path.display())))
    }

    /// OpenAI CLIP's tokenizer from the vocabulary compiled into the library (open_clip's
    /// `bpe_simple_vocab_16e6.txt.gz`), padding with `pad` (`"!"`, id 0, as open_clip does;
    /// `"<|endoftext|>"` as SD1.5's transformers tokenizer does).
    pub fn openai(pad: &str) -> Result<Self> {
        Self::from_bpe_gz_bytes(OPENAI_BPE_GZ, pad)
    }

    /// [`ClipTokenizer::from_bpe_gz`] from the gzipped file's bytes.
    pub fn from_bpe_gz_bytes(gz: &[u8], pad: &str) -> Result<Self> {
        let mut text = String::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_string(&mut text)
            .map_err(|e| AvatarError::Weights(format!("BPE vocabulary: {e}")))?;
        let merges: Vec<(String, String)> = text
            .lines()
            .skip(1)
            .take(CLIP_MERGES)
            .filter_map(|line| line.split_once(' '))
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect();
        let byte_chars: Vec<String> = bytes_to_unicode()
            .iter()
            .map(|(_, c)| c.to_string())
            .collect();
        let tokens = byte_chars
            .iter()
            .cloned()
            .chain(byte_chars.iter().map(|c| format!("{c}</w>")))
            .chain(merges.iter().map(|(a, b)| format!("{a}{b}")))
            .chain([BOS.to_owned(), EOS.to_owned()]);
        let vocab = tokens.enumerate().map(|(i, t)| (t, i as u32)).collect();
        Self::new(vocab, merges, pad)
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// The ids of `text` without start/end tokens, truncation or padding.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        let mut rest = 0;
        // Special tokens are matched in the raw text, before normalisation.
        for special in self.specials.find_iter(text) {
            self.encode_plain(&text[rest..special.start()], &mut ids);
            ids.push(self.special_ids[special.as_str()]);
            rest = special.end();
        }
        self.encode_plain(&text[rest..], &mut ids);
        ids
    }

    fn encode_plain(&self, text: &str, ids: &mut Vec<u32>) {
        let normalized: String = text.nfc().collect();
        let collapsed = normalized.split_whitespace().collect::<Vec<_>>().join(" ");
        let lower = collapsed.to_lowercase();
        for piece in self.pattern.find_iter(&lower) {
            let mapped: String = piece
                .as_str()
                .bytes()
                .map(|b| self.byte_chars[b as usize])
                .collect();
            ids.extend(self.bpe(&mapped));
        }
    }

    /// `[BOS, ids..., EOS, pad...]` of exactly `max_length` (77), truncating the text to
    /// `max_length - 2` tokens as diffusers' pipelines do.
    pub fn encode_padded(&self, text: &str, max_length: usize) -> Vec<u32> {
        self.encode_windows(text, max_length, 1).remove(0)
    }

    /// `text` in `windows` padded sequences of `max_length`: its ids split into runs of
    /// `max_length - 2`, each wrapped as `[BOS, ids..., EOS, pad...]` (compel's / A1111's way
    /// past 77 tokens); runs beyond the text are empty (`[BOS, EOS, pad...]`), ids beyond
    /// `windows` runs are dropped. One window is [`encode_padded`](Self::encode_padded).
    pub fn encode_windows(&self, text: &str, max_length: usize, windows: usize) -> Vec<Vec<u32>> {
        let ids = self.encode(text);
        let run = max_length.saturating_sub(2);
        (0..windows.max(1))
            .map(|w| {
                let chunk = ids.iter().skip(w * run).take(run).copied();
                let mut out = Vec::with_capacity(max_length);
                out.push(self.bos);
                out.extend(chunk);
                out.push(self.eos);
                out.resize(max_length, self.pad);
                out
            })
            .collect()
    }

    /// BPE of one byte-mapped word, memoised.
    fn bpe(&self, word: &str) -> Vec<u32> {
        if let Some(ids) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(word)
        {
            return ids.clone();
        }
        let mut symbols: Vec<String> = word.chars().map(String::from).collect();
        if let Some(last) = symbols.last_mut() {
            last.push_str("</w>");
        }
        loop {
            let best = symbols
                .windows(2)
                .filter_map(|pair| {
                    self.ranks
                        .get(&(pair[0].clone(), pair[1].clone()))
                        .map(|&rank| (rank, pair[0].clone(), pair[1].clone()))
                })
                .min_by_key(|(rank, ..)| *rank);
            let Some((_, first, second)) = best else {
                break;
            };
            let mut merged = Vec::with_capacity(symbols.len());
            let mut i = 0;
            while i < symbols.len() {
                if i + 1 < symbols.len() && symbols[i] == first && symbols[i + 1] == second {
                    merged.push(format!("{first}{second}"));
                    i += 2;
                } else {
                    merged.push(symbols[i].clone());
                    i += 1;
                }
            }
            symbols = merged;
        }
        let ids: Vec<u32> = symbols
            .iter()
            .map(|s| self.vocab.get(s).copied().unwrap_or(self.eos))
            .collect();
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(word.to_owned(), ids.clone());
        ids
    }
}
