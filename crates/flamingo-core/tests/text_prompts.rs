//! Prompt strings, post-processing, training texts and label masking, against strings and
//! rows worked out by hand from the reference code (open_flamingo 2.0.1:
//! eval/models/open_flamingo.py, eval/evaluate.py, eval/eval_model.py, train/data.py,
//! train/train_utils.py; spec §6, §7.1, §7.2).

use flamingo_core::text::prompts::*;
use flamingo_core::Error;

#[test]
fn eval_prompts_have_no_space_after_image_and_demos_end_with_endofchunk() {
    assert_eq!(
        caption_prompt(Some("A cat.")),
        "<image>Output:A cat.<|endofchunk|>"
    );
    assert_eq!(caption_prompt(None), "<image>Output:");
    assert_eq!(
        vqa_prompt("What color?", Some("red")),
        "<image>Question:What color? Short answer:red<|endofchunk|>"
    );
    assert_eq!(
        vqa_prompt("What color?", None),
        "<image>Question:What color? Short answer:"
    );
    assert_eq!(
        imagenet_prompt(Some("tabby cat")),
        "<image>Output:tabby cat<|endofchunk|>"
    );
    assert_eq!(
        hateful_memes_prompt("hello", Some("no")),
        "<image>is an image with: 'hello' written on it. Is it hateful? Answer:no<|endofchunk|>"
    );
    assert_eq!(
        hateful_memes_prompt("hello", None),
        "<image>is an image with: 'hello' written on it. Is it hateful? Answer:"
    );
    assert_eq!(HATEFUL_MEMES_CLASSES, ["no", "yes"]);
}

#[test]
fn caption_and_vqa_demos_are_each_followed_by_a_newline_and_captions_are_stripped() {
    assert_eq!(
        caption_few_shot(&[" A dog. ", "Two cats.\n"], false),
        "<image>Output:A dog.<|endofchunk|>\n<image>Output:Two cats.<|endofchunk|>\n<image>Output:"
    );
    assert_eq!(
        vqa_few_shot(&[("Is it red?", "yes"), ("How many?", "2")], "Why?", false),
        "<image>Question:Is it red? Short answer:yes<|endofchunk|>\n\
         <image>Question:How many? Short answer:2<|endofchunk|>\n\
         <image>Question:Why? Short answer:"
    );
}

#[test]
fn zero_shot_uses_two_text_only_demos_and_keeps_only_the_query_image() {
    assert_eq!(effective_num_shots(0), 2);
    assert_eq!(effective_num_shots(4), 4);
    assert_eq!(
        caption_few_shot(&["A dog.", "Two cats."], true),
        "Output:A dog.<|endofchunk|>\nOutput:Two cats.<|endofchunk|>\n<image>Output:"
    );
    assert_eq!(
        vqa_few_shot(&[("Q1", "a1"), ("Q2", "a2")], "Q3", true),
        "Question:Q1 Short answer:a1<|endofchunk|>\nQuestion:Q2 Short answer:a2<|endofchunk|>\n\
         <image>Question:Q3 Short answer:"
    );
}

#[test]
fn classification_demos_are_concatenated_without_a_separator() {
    assert_eq!(
        imagenet_few_shot(&["goldfish", "tabby cat"], false),
        "<image>Output:goldfish<|endofchunk|><image>Output:tabby cat<|endofchunk|><image>Output:"
    );
    assert_eq!(
        hateful_memes_few_shot(&[("a", "no"), ("b", "yes")], "c", true),
        "is an image with: 'a' written on it. Is it hateful? Answer:no<|endofchunk|>\
         is an image with: 'b' written on it. Is it hateful? Answer:yes<|endofchunk|>\
         <image>is an image with: 'c' written on it. Is it hateful? Answer:"
    );
}

#[test]
fn caption_post_processing_cuts_at_the_first_output_and_removes_quotes() {
    assert_eq!(
        postprocess_caption("A \"big\" dog on a couch.\nOutput:A cat"),
        "A big dog on a couch.\n"
    );
    assert_eq!(postprocess_caption("no marker"), "no marker");
    assert_eq!(postprocess_caption("Output first"), "");
}

#[test]
fn vqa_post_processing_cuts_at_question_answer_or_short_then_at_the_first_comma_space() {
    assert_eq!(postprocess_vqa("red\nQuestion:What"), "red\n");
    assert_eq!(postprocess_vqa("blue Short answer:x"), "blue ");
    // The earliest of the three words wins, whichever it is.
    assert_eq!(postprocess_vqa("two Answer: three Question:"), "two ");
    assert_eq!(postprocess_vqa("red, blue, green"), "red");
    assert_eq!(postprocess_vqa("red,blue"), "red,blue");
    assert_eq!(postprocess_vqa("yes"), "yes");
}

#[test]
fn laion_text_strips_the_caption_and_appends_endofchunk_and_eos() {
    assert_eq!(
        laion_text("  a photo of a cat \n", "<|endoftext|>"),
        "<image>a photo of a cat<|endofchunk|><|endoftext|>"
    );
}

#[test]
fn mmc4_text_prefixes_image_sentences_drops_the_first_endofchunk_and_cleans_whitespace() {
    let sentences = ["Intro text.", "A cat sits.", "Middle.", "A dog runs."];
    // Images matched to sentences 1 and 3.
    assert_eq!(
        mmc4_text(&sentences, &[1, 3], "<|endoftext|>").unwrap(),
        "Intro text.<image>A cat sits. Middle.<|endofchunk|><image>A dog runs.<|endofchunk|><|endoftext|>"
    );
    // An image on the first sentence: the removed <|endofchunk|> is that one.
    assert_eq!(
        mmc4_text(&["First.", "Second."], &[0], "</s>").unwrap(),
        "<image>First. Second.<|endofchunk|></s>"
    );
    // Images given in kept order (not sentence order): the <|endofchunk|> removed is still
    // the first one in the text.
    assert_eq!(
        mmc4_text(&["x", "y", "z"], &[2, 0], "E").unwrap(),
        "<image>x y<|endofchunk|><image>z<|endofchunk|>E"
    );
    // A sentence starting with a space: "<image> " becomes "<image>".
    assert_eq!(
        mmc4_text(&[" a", "b"], &[0], "E").unwrap(),
        "<image>a b<|endofchunk|>E"
    );
    let err = mmc4_text(&["only"], &[1], "E").unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
}

#[test]
fn chatgpt_text_maps_placeholders_and_keeps_one_image_fewer_than_the_cap_when_over_it() {
    assert_eq!(
        chatgpt_interleaved_text("_!_IMAGE1_!_ A cat. _!_IMAGE2_!_ A dog.", 6, "E").unwrap(),
        "<image>A cat.<|endofchunk|><image>A dog.<|endofchunk|>E"
    );
    // Three images, cap 2: the text is cut at the start of the 2nd <image>.
    assert_eq!(
        chatgpt_interleaved_text("_!_IMAGE1_!_ a _!_IMAGE2_!_ b _!_IMAGE3_!_ c", 2, "E").unwrap(),
        "<image>a<|endofchunk|><|endofchunk|>E"
    );
    // Not placeholders: no digits, or no closing marker.
    assert_eq!(
        chatgpt_interleaved_text("_!_IMAGE_!_ _!_IMAGE7", 6, "E").unwrap(),
        "_!_IMAGE_!_ _!_IMAGE7<|endofchunk|>E"
    );
}

#[test]
fn interleaved_rows_are_rejected_by_the_reference_rules_in_order() {
    const M: u32 = 9;
    assert_eq!(
        check_interleaved_row(&[M, 1, 2, M, 3], M, 1, Some(0.1)),
        Ok(2)
    );
    assert_eq!(
        check_interleaved_row(&[1, 2, 3], M, 1, None),
        Err(InterleavedRejection::TooFewImages { found: 0, min: 1 })
    );
    assert_eq!(
        check_interleaved_row(&[M, 1, 2], M, 1, Some(0.5)),
        Err(InterleavedRejection::SingleImage)
    );
    assert_eq!(check_interleaved_row(&[M, 1, 2], M, 1, Some(0.51)), Ok(1));
    assert_eq!(
        check_interleaved_row(&[1, 2, M], M, 1, Some(0.9)),
        Err(InterleavedRejection::SingleImageAtEnd)
    );
}

// Ids used by the label tests: pad 0, media 9, eoc 8, eos 7, text 1..=6.
const PAD: u32 = 0;
const MEDIA: u32 = 9;
const EOC: u32 = 8;
const EOS: u32 = 7;
const X: i64 = IGNORE_INDEX;

#[test]
fn pair_labels_mask_pad_and_image_but_keep_endofchunk_and_eos() {
    // <image> a b <eoc> <eos> <pad> <pad>
    let ids = [MEDIA, 1, 2, EOC, EOS, PAD, PAD];
    assert_eq!(pair_labels(&ids, PAD, MEDIA), vec![X, 1, 2, 8, 7, X, X]);
}

#[test]
fn pair_labels_mask_eos_too_when_the_tokenizer_pads_with_eos() {
    let ids = [MEDIA, 1, EOC, EOS, EOS];
    assert_eq!(pair_labels(&ids, EOS, MEDIA), vec![X, 1, 8, X, X]);
}

#[test]
fn interleaved_labels_cover_text_after_each_image_including_its_endofchunk() {
    // t t <image> a b <eoc> c <image> d <eoc> <eos> <pad>
    let ids = [1, 2, MEDIA, 3, 4, EOC, 5, MEDIA, 6, EOC, EOS, PAD];
    assert_eq!(
        interleaved_labels(&ids, PAD, MEDIA, EOC),
        vec![X, X, X, 3, 4, 8, X, X, 6, 8, X, X]
    );
}

#[test]
fn interleaved_labels_of_a_row_without_an_image_are_all_masked() {
    let ids = [1, 2, EOC, EOS, PAD];
    assert_eq!(interleaved_labels(&ids, PAD, MEDIA, EOC), vec![X; 5]);
}

#[test]
fn interleaved_labels_of_a_row_ending_in_its_only_image_are_all_masked() {
    // The case the trainer rejects as "Only one image at the end of sample".
    let ids = [1, 2, 3, MEDIA];
    assert_eq!(interleaved_labels(&ids, PAD, MEDIA, EOC), vec![X; 4]);
}

#[test]
fn interleaved_labels_mask_a_second_endofchunk_that_has_no_image_before_it() {
    // <image> a <eoc> b <eoc> <image> c: the run after the first <eoc> reaches the next
    // <image>, masking "b" and the second <eoc>.
    let ids = [MEDIA, 1, EOC, 2, EOC, MEDIA, 3];
    assert_eq!(
        interleaved_labels(&ids, PAD, MEDIA, EOC),
        vec![X, 1, 8, X, X, X, 3]
    );
}

#[test]
fn interleaved_labels_keep_an_endofchunk_at_the_very_end_and_back_to_back_images() {
    // <image><eoc><image> a <eoc>: an empty first chunk still trains its <eoc>.
    let ids = [MEDIA, EOC, MEDIA, 1, EOC];
    assert_eq!(
        interleaved_labels(&ids, PAD, MEDIA, EOC),
        vec![X, 8, X, 1, 8]
    );
    // An <eoc> before the first image is masked like all text there.
    let ids = [EOC, MEDIA, 1];
    assert_eq!(interleaved_labels(&ids, PAD, MEDIA, EOC), vec![X, X, 1]);
}

#[test]
fn segments_become_the_reference_interleaved_format() {
    let prompt = interleaved_prompt(&[
        Segment::Image(0),
        Segment::text("An image of two cats."),
        Segment::Image(1),
        Segment::text("An image of a bathroom sink."),
        Segment::Image(2),
        Segment::text("An image of"),
    ])
    .unwrap();
    // The README demo prompt, exactly.
    assert_eq!(
        prompt.text,
        "<image>An image of two cats.<|endofchunk|><image>An image of a bathroom sink.\
         <|endofchunk|><image>An image of"
    );
    assert_eq!(prompt.image_order, vec![0, 1, 2]);
}

#[test]
fn segments_keep_leading_text_open_close_empty_chunks_and_do_not_double_endofchunk() {
    let prompt = interleaved_prompt(&[
        Segment::text("Look: "),
        Segment::Image(3),
        Segment::Image(1),
        Segment::text("two cats<|endofchunk|>"),
        Segment::Image(3),
    ])
    .unwrap();
    assert_eq!(
        prompt.text,
        "Look: <image><|endofchunk|><image>two cats<|endofchunk|><image>"
    );
    assert_eq!(prompt.image_order, vec![3, 1, 3]);
}

#[test]
fn a_text_segment_with_a_literal_image_token_is_refused() {
    let err = interleaved_prompt(&[Segment::text("a <image> b")]).unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    assert!(err.to_string().contains("segment 0"), "{err}");
}
