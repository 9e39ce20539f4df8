//! Text chunking for ingestion: pieces of at most `size` characters, cut on paragraph, then
//! line, then sentence, then word boundaries (a single word longer than `size` is cut), packed
//! greedily, each chunk starting with up to `overlap` characters of whole pieces from the end of
//! the previous one — the behaviour of LangChain's `RecursiveCharacterTextSplitter`.

const SEPARATORS: &[&str] = &["\n\n", "\n", ". ", "? ", "! ", "; ", ", ", " "];

fn len(s: &str) -> usize {
    s.chars().count()
}

/// Splits `text` into chunks; `overlap` must be smaller than `size`.
pub fn split(text: &str, size: usize, overlap: usize) -> Result<Vec<String>, String> {
    if size == 0 {
        return Err("chunk.size must be at least 1".into());
    }
    if overlap >= size {
        return Err(format!(
            "chunk.overlap ({overlap}) must be smaller than chunk.size ({size})"
        ));
    }
    let mut pieces = Vec::new();
    pieces_of(text, SEPARATORS, size, &mut pieces);
    Ok(merge(&pieces, size, overlap))
}

/// Cuts `text` into pieces of at most `size` characters, each keeping its trailing separator.
fn pieces_of<'a>(text: &'a str, separators: &[&str], size: usize, out: &mut Vec<&'a str>) {
    if len(text) <= size {
        out.push(text);
        return;
    }
    let Some((sep, rest)) = separators
        .iter()
        .enumerate()
        .find(|(_, s)| text.contains(**s))
        .map(|(i, s)| (*s, &separators[i + 1..]))
    else {
        // No separator left: cut on character boundaries.
        let mut start = 0;
        for (count, (i, _)) in text.char_indices().enumerate() {
            if count > 0 && count % size == 0 {
                out.push(&text[start..i]);
                start = i;
            }
        }
        out.push(&text[start..]);
        return;
    };
    let mut start = 0;
    for (i, _) in text.match_indices(sep) {
        let end = i + sep.len();
        pieces_of(&text[start..end], rest, size, out);
        start = end;
    }
    if start < text.len() {
        pieces_of(&text[start..], rest, size, out);
    }
}

fn merge(pieces: &[&str], size: usize, overlap: usize) -> Vec<String> {
    let mut chunks = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    let mut current_len = 0;
    for piece in pieces {
        let piece_len = len(piece);
        if current_len + piece_len > size && !current.is_empty() {
            push_trimmed(&mut chunks, &current.concat());
            // Keep whole trailing pieces that fit in the overlap and leave room for this one.
            while !current.is_empty() && (current_len > overlap || current_len + piece_len > size) {
                current_len -= len(current.remove(0));
            }
        }
        current.push(piece);
        current_len += piece_len;
    }
    if !current.is_empty() {
        push_trimmed(&mut chunks, &current.concat());
    }
    chunks
}

fn push_trimmed(chunks: &mut Vec<String>, chunk: &str) {
    let trimmed = chunk.trim();
    if !trimmed.is_empty() {
        chunks.push(trimmed.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_one_chunk() {
        assert_eq!(split("Hello world.", 100, 10).expect("valid"), ["Hello world."]);
    }

    #[test]
    fn paragraphs_are_preferred_boundaries() {
        let text = "First paragraph here.\n\nSecond paragraph here.";
        assert_eq!(
            split(text, 30, 0).expect("valid"),
            ["First paragraph here.", "Second paragraph here."]
        );
    }

    #[test]
    fn sentences_split_when_a_paragraph_is_too_long_and_every_chunk_fits() {
        let text = "One sentence is here. Another one follows it. A third closes the paragraph.";
        let chunks = split(text, 50, 0).expect("valid");
        assert!(chunks.len() >= 2, "{chunks:?}");
        assert!(chunks.iter().all(|c| c.chars().count() <= 50), "{chunks:?}");
        assert!(chunks[0].starts_with("One sentence is here."), "{chunks:?}");
        assert_eq!(
            chunks.join(" ").split_whitespace().count(),
            text.split_whitespace().count()
        );
    }

    #[test]
    fn overlap_repeats_the_tail_of_the_previous_chunk() {
        let text = "alpha beta gamma delta epsilon zeta eta theta iota kappa";
        let chunks = split(text, 20, 8).expect("valid");
        assert!(chunks.len() > 2);
        for pair in chunks.windows(2) {
            let last_word = pair[0].split_whitespace().last().expect("word");
            assert!(pair[1].starts_with(last_word), "{pair:?}");
        }
    }

    #[test]
    fn a_word_longer_than_the_size_is_cut_on_characters() {
        let chunks = split("ééééééééééé", 4, 0).expect("valid");
        assert_eq!(chunks, ["éééé", "éééé", "ééé"]);
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(split("x", 0, 0).is_err());
        assert!(split("x", 10, 10).expect_err("overlap too big").contains("overlap"));
    }
}
