//! OpenFlamingo's text formats, string for string: the evaluation prompts and their
//! post-processing (`open_flamingo/eval/models/open_flamingo.py`, `eval/evaluate.py`,
//! `eval/eval_model.py`; spec §6), the training texts (`open_flamingo/train/data.py`,
//! spec §7.1) and the label masking of `train/train_utils.py` (spec §7.2), plus typed
//! interleaved input for callers that hold images and text separately.
//!
//! Two facts decide most of it: there is **no space after `<image>`** (the paper prints
//! `<image> Output:` but the code never did), and a chunk of text belonging to an image ends
//! with `<|endofchunk|>`, the stop token of generation.

use crate::text::{END_OF_CHUNK_TOKEN, MEDIA_TOKEN};
use crate::{Error, Result};

/// The label value the loss ignores (PyTorch's `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

/// HatefulMemes class names, in the reference's order (`HM_CLASSNAMES`).
pub const HATEFUL_MEMES_CLASSES: [&str; 2] = ["no", "yes"];

// ---------------------------------------------------------------------------------------
// Evaluation prompts (spec §6)
// ---------------------------------------------------------------------------------------

/// `get_caption_prompt`: a demo `"<image>Output:{caption}<|endofchunk|>"`, or with `None`
/// the query `"<image>Output:"`. COCO and Flickr30k.
pub fn caption_prompt(caption: Option<&str>) -> String {
    completed(format!("{MEDIA_TOKEN}Output:"), caption)
}

/// `get_vqa_prompt`: a demo `"<image>Question:{q} Short answer:{a}<|endofchunk|>"`, or with
/// `None` the query `"<image>Question:{q} Short answer:"`. VQAv2, OK-VQA, VizWiz, TextVQA.
pub fn vqa_prompt(question: &str, answer: Option<&str>) -> String {
    completed(
        format!("{MEDIA_TOKEN}Question:{question} Short answer:"),
        answer,
    )
}

/// `get_imagenet_prompt`: `"<image>Output:{label}<|endofchunk|>"`, or the query `"<image>Output:"`.
pub fn imagenet_prompt(label: Option<&str>) -> String {
    completed(format!("{MEDIA_TOKEN}Output:"), label)
}

/// `get_hateful_memes_prompt`: `"<image>is an image with: '{ocr}' written on it. Is it
/// hateful? Answer:{label}<|endofchunk|>"`; the query ends at `Answer:`.
pub fn hateful_memes_prompt(ocr: &str, label: Option<&str>) -> String {
    completed(
        format!("{MEDIA_TOKEN}is an image with: '{ocr}' written on it. Is it hateful? Answer:"),
        label,
    )
}

/// The reference's `{x if x is not None else ''}{'<|endofchunk|>' if x is not None else ''}`.
fn completed(prefix: String, value: Option<&str>) -> String {
    match value {
        Some(v) => format!("{prefix}{v}{END_OF_CHUNK_TOKEN}"),
        None => prefix,
    }
}

/// `compute_effective_num_shots` for OpenFlamingo: zero-shot still samples **2** demos,
/// which are then shown as text only (see [`few_shot_prompt`]).
pub fn effective_num_shots(num_shots: usize) -> usize {
    if num_shots == 0 {
        2
    } else {
        num_shots
    }
}

/// The evaluation's prompt assembly: every demo followed by `separator` (`"\n"` for
/// captioning and VQA, `""` for classification), then the query. With `text_only_demos`
/// (the reference's zero-shot, `num_shots == 0`) every `<image>` is removed from the demo
/// text ("Keep the text but remove the image tags for the zero-shot case"), and only the
/// query image is passed to the model.
pub fn few_shot_prompt<S: AsRef<str>>(
    demos: &[S],
    separator: &str,
    query: &str,
    text_only_demos: bool,
) -> String {
    let mut context: String = demos
        .iter()
        .map(|d| format!("{}{separator}", d.as_ref()))
        .collect();
    if text_only_demos {
        context = context.replace(MEDIA_TOKEN, "");
    }
    context + query
}

/// Captioning: demos `caption_prompt(caption.strip())` each followed by `"\n"`, then
/// `"<image>Output:"`. Demo images first, the query image last (unless `text_only_demos`).
pub fn caption_few_shot<S: AsRef<str>>(demo_captions: &[S], text_only_demos: bool) -> String {
    let demos: Vec<String> = demo_captions
        .iter()
        .map(|c| caption_prompt(Some(py_strip(c.as_ref()))))
        .collect();
    few_shot_prompt(&demos, "\n", &caption_prompt(None), text_only_demos)
}

/// VQA: demos `vqa_prompt(question, answers[0])` each followed by `"\n"`, then the query.
/// (Unlike captions, the reference does not strip questions or answers.)
pub fn vqa_few_shot<Q: AsRef<str>, A: AsRef<str>>(
    demos: &[(Q, A)],
    question: &str,
    text_only_demos: bool,
) -> String {
    let demos: Vec<String> = demos
        .iter()
        .map(|(q, a)| vqa_prompt(q.as_ref(), Some(a.as_ref())))
        .collect();
    few_shot_prompt(&demos, "\n", &vqa_prompt(question, None), text_only_demos)
}

/// ImageNet: demos concatenated with no separator, then `"<image>Output:"`; the class names
/// are then ranked by log-probability after it.
pub fn imagenet_few_shot<S: AsRef<str>>(demo_labels: &[S], text_only_demos: bool) -> String {
    let demos: Vec<String> = demo_labels
        .iter()
        .map(|l| imagenet_prompt(Some(l.as_ref())))
        .collect();
    few_shot_prompt(&demos, "", &imagenet_prompt(None), text_only_demos)
}

/// HatefulMemes: `(ocr, class name)` demos concatenated with no separator, then the query
/// ending at `Answer:`; the classes [`HATEFUL_MEMES_CLASSES`] are ranked after it.
pub fn hateful_memes_few_shot<O: AsRef<str>, L: AsRef<str>>(
    demos: &[(O, L)],
    query_ocr: &str,
    text_only_demos: bool,
) -> String {
    let demos: Vec<String> = demos
        .iter()
        .map(|(o, l)| hateful_memes_prompt(o.as_ref(), Some(l.as_ref())))
        .collect();
    few_shot_prompt(
        &demos,
        "",
        &hateful_memes_prompt(query_ocr, None),
        text_only_demos,
    )
}

/// Captioning post-processing: `postprocess_captioning_generation(text)` is
/// `text.split("Output", 1)[0]`, then the evaluation removes every `"`. The generation is
/// decoded from the new tokens only, with `skip_special_tokens=True`.
pub fn postprocess_caption(text: &str) -> String {
    let head = text.split_once("Output").map_or(text, |(h, _)| h);
    head.replace('"', "")
}

/// VQA post-processing: `postprocess_vqa_generation` is
/// `re.split("Question|Answer|Short", s, 1)[0]`, then `re.split(", ", answer, 1)[0]`.
/// (OK-VQA's stemming happens afterwards, in its metric.)
pub fn postprocess_vqa(text: &str) -> String {
    let cut = ["Question", "Answer", "Short"]
        .iter()
        .filter_map(|w| text.find(w))
        .min()
        .unwrap_or(text.len());
    let answer = &text[..cut];
    answer
        .split_once(", ")
        .map_or(answer, |(h, _)| h)
        .to_string()
}

// ---------------------------------------------------------------------------------------
// Training texts (spec §7.1)
// ---------------------------------------------------------------------------------------

/// `preprocess_laion_text`: `f"<image>{caption.strip()}<|endofchunk|>{eos_token}"`. The
/// trainer tokenizes a batch of these with right padding, `max_length=32`,
/// `truncation="only_first"` (which can cut the `<|endofchunk|>` and EOS off).
pub fn laion_text(caption: &str, eos_token: &str) -> String {
    format!(
        "{MEDIA_TOKEN}{}{END_OF_CHUNK_TOKEN}{eos_token}",
        py_strip(caption)
    )
}

/// `preprocess_interleaved` (MMC4), once images have been matched to sentences: each
/// sentence in `image_sentences` (in the order of the kept images) gets the prefix
/// `"<|endofchunk|><image>"`; the sentences are joined with `" "`; the first
/// `<|endofchunk|>` is removed; whitespace is cleaned (`" <|endofchunk|>"` →
/// `"<|endofchunk|>"`, `"<image> "` → `"<image>"`, `" <image>"` → `"<image>"`); finally
/// `"<|endofchunk|>{eos}"` is appended. The trainer tokenizes it with right padding to
/// `max_length=256` (`padding="max_length"`), truncating.
pub fn mmc4_text<S: AsRef<str>>(
    sentences: &[S],
    image_sentences: &[usize],
    eos_token: &str,
) -> Result<String> {
    let mut sentences: Vec<String> = sentences.iter().map(|s| s.as_ref().to_string()).collect();
    for &ix in image_sentences {
        let Some(sentence) = sentences.get_mut(ix) else {
            crate::invalid_input!(
                "image matched to sentence {ix}, but the document has {} sentences",
                sentences.len()
            );
        };
        *sentence = format!("{END_OF_CHUNK_TOKEN}{MEDIA_TOKEN}{sentence}");
    }
    let text = sentences.join(" ").replacen(END_OF_CHUNK_TOKEN, "", 1);
    Ok(format!(
        "{}{END_OF_CHUNK_TOKEN}{eos_token}",
        interleaved_whitespace_cleanup(&text)
    ))
}

/// `preprocess_gpt_interleaved` (the ChatGPT-generated sequences of the 4B models):
/// `_!_IMAGE{k}_!_` → `"<|endofchunk|><image>"`, the first `<|endofchunk|>` removed, the
/// MMC4 whitespace clean-up; with more than `max_num_images` images the text is cut at the
/// start of the `max_num_images`-th `<image>` (`text[:indices[max_num_images - 1]]`, so
/// only `max_num_images - 1` images remain, as in the reference); then
/// `"<|endofchunk|>{eos}"` is appended.
pub fn chatgpt_interleaved_text(
    example: &str,
    max_num_images: usize,
    eos_token: &str,
) -> Result<String> {
    if max_num_images == 0 {
        crate::invalid_input!("max_num_images must be at least 1");
    }
    let text = replace_image_placeholders(example).replacen(END_OF_CHUNK_TOKEN, "", 1);
    let mut text = interleaved_whitespace_cleanup(&text);
    let starts: Vec<usize> = text.match_indices(MEDIA_TOKEN).map(|(i, _)| i).collect();
    if starts.len() > max_num_images {
        text.truncate(starts[max_num_images - 1]);
    }
    Ok(format!("{text}{END_OF_CHUNK_TOKEN}{eos_token}"))
}

/// `re.sub(r"_!_IMAGE\d+_!_", "<|endofchunk|><image>", text)` (ASCII digits).
fn replace_image_placeholders(text: &str) -> String {
    const OPEN: &str = "_!_IMAGE";
    const CLOSE: &str = "_!_";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(OPEN) {
        let after = &rest[at + OPEN.len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && after[digits..].starts_with(CLOSE) {
            out.push_str(&rest[..at]);
            out.push_str(END_OF_CHUNK_TOKEN);
            out.push_str(MEDIA_TOKEN);
            rest = &after[digits + CLOSE.len()..];
        } else {
            // Not a placeholder: keep its first byte and look again after it.
            out.push_str(&rest[..at + 1]);
            rest = &rest[at + 1..];
        }
    }
    out.push_str(rest);
    out
}

/// The training texts' clean-up, in the reference's order.
fn interleaved_whitespace_cleanup(text: &str) -> String {
    text.replace(&format!(" {END_OF_CHUNK_TOKEN}"), END_OF_CHUNK_TOKEN)
        .replace(&format!("{MEDIA_TOKEN} "), MEDIA_TOKEN)
        .replace(&format!(" {MEDIA_TOKEN}"), MEDIA_TOKEN)
}

/// Python's `str.strip()`: Unicode whitespace at both ends.
fn py_strip(s: &str) -> &str {
    s.trim()
}

/// Why `preprocess_interleaved` drops a tokenized MMC4 row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterleavedRejection {
    /// Fewer `<image>` tokens survived truncation than `mmc4_min_num_images`.
    TooFewImages { found: usize, min: usize },
    /// A single-image row, dropped with probability 0.5 (`random.random() <= 0.5`).
    SingleImage,
    /// The only `<image>` is the row's last token: every label would be −100.
    SingleImageAtEnd,
}

/// The rejection rules applied to a tokenized (padded, truncated) MMC4 row, in the
/// reference's order. `single_image_draw` is the `random.random()` draw in `[0, 1)`; `None`
/// skips that random rule. Returns the number of images the row keeps.
pub fn check_interleaved_row(
    ids: &[u32],
    media_token_id: u32,
    min_num_images: usize,
    single_image_draw: Option<f64>,
) -> std::result::Result<usize, InterleavedRejection> {
    let found = ids.iter().filter(|&&t| t == media_token_id).count();
    if found < min_num_images {
        return Err(InterleavedRejection::TooFewImages {
            found,
            min: min_num_images,
        });
    }
    if found == 1 && single_image_draw.is_some_and(|d| d <= 0.5) {
        return Err(InterleavedRejection::SingleImage);
    }
    if found == 1 && ids.last() == Some(&media_token_id) {
        return Err(InterleavedRejection::SingleImageAtEnd);
    }
    Ok(found)
}

// ---------------------------------------------------------------------------------------
// Label masking (spec §7.2); HF shifts labels inside the loss, so these are unshifted.
// ---------------------------------------------------------------------------------------

/// LAION pairs: `labels = input_ids`, then −100 where the id is the pad id or `<image>`.
/// The EOS after `<|endofchunk|>` stays a target unless the tokenizer pads with EOS.
pub fn pair_labels(ids: &[u32], pad_token_id: u32, media_token_id: u32) -> Vec<i64> {
    ids.iter()
        .map(|&t| {
            if t == pad_token_id || t == media_token_id {
                IGNORE_INDEX
            } else {
                i64::from(t)
            }
        })
        .collect()
}

/// MMC4 documents, per row as `train_one_epoch` does it:
/// 1. pad → −100;
/// 2. every token before the first `<image>` → −100 (a row without `<image>` is all −100,
///    and the trainer skips the NaN loss it gives);
/// 3. for every `<|endofchunk|>` still present after step 2 (positions found once, up
///    front), the tokens after it up to the next `<image>` → −100: this masks the trailing
///    EOS and padding, and text between chunks (including a later `<|endofchunk|>` with no
///    `<image>` before it);
/// 4. `<image>` → −100.
///
/// So the loss covers the text following each image, **including its `<|endofchunk|>`**;
/// EOS is never a target here.
pub fn interleaved_labels(
    ids: &[u32],
    pad_token_id: u32,
    media_token_id: u32,
    end_of_chunk_token_id: u32,
) -> Vec<i64> {
    let media = i64::from(media_token_id);
    let mut labels: Vec<i64> = ids
        .iter()
        .map(|&t| {
            if t == pad_token_id {
                IGNORE_INDEX
            } else {
                i64::from(t)
            }
        })
        .collect();
    for label in labels.iter_mut().take_while(|l| **l != media) {
        *label = IGNORE_INDEX;
    }
    let eoc = i64::from(end_of_chunk_token_id);
    let chunk_ends: Vec<usize> = (0..labels.len()).filter(|&p| labels[p] == eoc).collect();
    for p in chunk_ends {
        for label in labels[p + 1..].iter_mut().take_while(|l| **l != media) {
            *label = IGNORE_INDEX;
        }
    }
    for label in labels.iter_mut().filter(|l| **l == media) {
        *label = IGNORE_INDEX;
    }
    labels
}

// ---------------------------------------------------------------------------------------
// Typed interleaved input
// ---------------------------------------------------------------------------------------

/// One piece of an interleaved prompt: an image (an index into the caller's images) or text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    Image(usize),
    Text(String),
}

impl Segment {
    pub fn text(text: impl Into<String>) -> Self {
        Segment::Text(text.into())
    }
}

/// An interleaved prompt as text, and the order in which its images must be stacked along
/// `T_img` (the `k`-th `<image>` token attends to `images[image_order[k]]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterleavedPrompt {
    pub text: String,
    pub image_order: Vec<usize>,
}

/// Turns `[image, text, image, text]` into the reference's format: each image becomes
/// `<image>` directly followed by its text (no space is added; the models never saw one),
/// and each image after the first first closes the previous chunk with `<|endofchunk|>`
/// (unless the text already ends with one), as in the MMC4 training text and the README
/// demo `"<image>An image of two cats.<|endofchunk|><image>An image of"`. Text before the
/// first image stays unclosed, and the last chunk is left open for generation; append
/// `<|endofchunk|>` to the last text to close it. Text is otherwise kept verbatim.
///
/// A text segment containing `<image>` is refused: it would add a media token without an
/// image.
pub fn interleaved_prompt(segments: &[Segment]) -> Result<InterleavedPrompt> {
    let mut text = String::new();
    let mut image_order = Vec::new();
    for (i, segment) in segments.iter().enumerate() {
        match segment {
            Segment::Image(index) => {
                if !image_order.is_empty() && !text.ends_with(END_OF_CHUNK_TOKEN) {
                    text.push_str(END_OF_CHUNK_TOKEN);
                }
                text.push_str(MEDIA_TOKEN);
                image_order.push(*index);
            }
            Segment::Text(t) => {
                if t.contains(MEDIA_TOKEN) {
                    return Err(Error::InvalidInput(format!(
                        "text segment {i} contains \"{MEDIA_TOKEN}\"; pass images as \
                         Segment::Image so that each <image> token has an image"
                    )));
                }
                text.push_str(t);
            }
        }
    }
    Ok(InterleavedPrompt { text, image_order })
}
