//! Counting the tokens of a text the way a model would: with its own tokenizer (a Hugging
//! Face `tokenizer.json`) when one is available, else an estimate of 4 bytes a token.

use std::path::Path;

use tokenizers::Tokenizer;

/// Counts tokens for cost estimates.
#[derive(Debug, Clone)]
pub enum TokenCounter {
    Tokenizer(Box<Tokenizer>),
    /// ⌈bytes / 4⌉: the usual rule of thumb for English and code with BPE vocabularies.
    Estimate,
}

impl TokenCounter {
    /// The tokenizer in `path` (a `tokenizer.json`).
    pub fn from_file(path: &Path) -> Result<Self, String> {
        Tokenizer::from_file(path)
            .map(|t| Self::Tokenizer(Box::new(t)))
            .map_err(|e| format!("cannot load the tokenizer {}: {e}", path.display()))
    }

    pub fn count(&self, text: &str) -> u64 {
        match self {
            Self::Tokenizer(t) => match t.encode(text, false) {
                Ok(encoding) => encoding.len() as u64,
                Err(_) => Self::Estimate.count(text),
            },
            Self::Estimate => (text.len() as u64).div_ceil(4),
        }
    }

    /// `tokenizer` or `estimate`, as reported with the counts.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Tokenizer(_) => "tokenizer",
            Self::Estimate => "estimate",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_rounds_up_and_a_tokenizer_counts_its_own_tokens() {
        assert_eq!(TokenCounter::Estimate.count(""), 0);
        assert_eq!(TokenCounter::Estimate.count("abcde"), 2);
        let model = crate::embed::find_default_model().expect("run ./scripts/setup.sh");
        let counter = TokenCounter::from_file(&model.join("tokenizer.json")).expect("tokenizer");
        assert_eq!(counter.label(), "tokenizer");
        // WordPiece splits these into known pieces, no special tokens added.
        assert_eq!(counter.count("hello world"), 2);
        assert!(counter.count("def test_add(): assert add(2, 3) == 5") > 8);
        let missing =
            TokenCounter::from_file(Path::new("/nonexistent/tokenizer.json")).expect_err("missing");
        assert!(missing.contains("/nonexistent/tokenizer.json"), "{missing}");
    }
}
