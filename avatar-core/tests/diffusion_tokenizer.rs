//! The CLIP tokenizer against transformers 5.23's `CLIPTokenizer`: the real 49,408-token vocabulary
//! on 31 tricky strings (`fixtures/diffusion/clip_bpe_cases.json`), and the tiny fixture
//! tokenizers of the SD1.5 / SDXL pipelines (`io/tokenizer_ids.json`).

use std::path::{Path, PathBuf};

use avatar_core::diffusion::tokenizer::{ClipTokenizer, MAX_LENGTH};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusion")
}

fn ids(value: &serde_json::Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn real_vocabulary_matches_transformers_on_tricky_strings() {
    let tokenizer = ClipTokenizer::openai("<|endoftext|>").unwrap();
    assert_eq!(tokenizer.vocab_size(), 49_408);
    let cases: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("clip_bpe_cases.json")).unwrap(),
    )
    .unwrap();
    let cases = cases["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 31);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            tokenizer.encode_padded(text, MAX_LENGTH),
            ids(&case["input_ids"]),
            "{text:?}"
        );
        let mut untruncated = vec![49406];
        untruncated.extend(tokenizer.encode(text));
        untruncated.push(49407);
        assert_eq!(untruncated, ids(&case["untruncated_ids"]), "{text:?}");
    }
}

#[test]
fn pipeline_tokenizers_match_transformers() {
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("io/tokenizer_ids.json")).unwrap(),
    )
    .unwrap();
    for (key, folder) in [
        ("sd15_tokenizer", "sd15_tiny/tokenizer"),
        ("sdxl_tokenizer", "sdxl_tiny/tokenizer"),
        ("sdxl_tokenizer_2", "sdxl_tiny/tokenizer_2"),
    ] {
        let tokenizer = ClipTokenizer::load(&fixtures().join(folder)).unwrap();
        let cases = expected[key].as_array().unwrap_or_else(|| panic!("{key}"));
        assert!(!cases.is_empty());
        for case in cases {
            let text = case["text"].as_str().unwrap();
            assert_eq!(
                tokenizer.encode_padded(text, MAX_LENGTH),
                ids(&case["input_ids"]),
                "{key} {text:?}"
            );
        }
    }
}
