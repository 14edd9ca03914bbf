//! Language-modelling labels of token-id files, in transformers' convention: `labels`
//! beside `input_ids` are aligned with the tokens (-100 where nothing is learned), and the
//! loss shifts them; `input_ids` without labels train on every real token (as
//! `DataCollatorForLanguageModeling` makes them). Data built for `Trainer` or TRL reads as
//! it is.
//!
//! The host keeps token labels shifted once, when the data is read: `labels[:, t]` is the
//! token to predict at position t (transformers' `shift_labels`), -100 at the last
//! position. So the loss, the metrics and plugins compare `logits[:, t]` with
//! `labels[:, t]`, as for tokenized text.

use tch::Tensor;

use crate::error::InputError;

/// Shifts a token file's `labels` (or makes them from `input_ids`). `label_field` is the
/// field holding the labels, if any. Fields without 2-D `input_ids` are left alone, as are
/// labels of another shape (one class per sequence).
pub fn shift_for_causal_lm(
    source: &str,
    fields: &mut Vec<(String, Tensor)>,
    label_field: Option<&str>,
) -> Result<(), InputError> {
    let Some(ids) = fields.iter().find(|(n, t)| n == "input_ids" && t.dim() == 2 && !t.is_floating_point()) else {
        return Ok(());
    };
    let ids = ids.1.shallow_clone();
    let Some(label_field) = label_field else {
        let mask = fields.iter().find(|(n, t)| n == "attention_mask" && t.size() == ids.size()).map(|(_, t)| t);
        let aligned = match mask {
            Some(mask) => ids.masked_fill(&mask.eq(0), -100),
            None => ids.shallow_clone(),
        };
        fields.push(("labels".to_owned(), shift_left(&aligned)));
        return Ok(());
    };
    let Some((_, labels)) = fields.iter_mut().find(|(n, _)| n == label_field) else { return Ok(()) };
    if labels.size() != ids.size() || labels.is_floating_point() {
        return Ok(());
    }
    if already_shifted(labels, &ids) {
        return Err(InputError::new(format!(
            "{source}: the '{label_field}' field holds the next token at each position (labels[:, t] = input_ids[:, t+1]); as in transformers, give labels aligned with input_ids (the loss shifts them), or leave labels out to learn every token"
        )));
    }
    *labels = shift_left(labels);
    Ok(())
}

/// labels[:, t] = aligned[:, t + 1], and -100 at the last position.
fn shift_left(aligned: &Tensor) -> Tensor {
    let (n, t) = (aligned.size()[0], aligned.size()[1]);
    let ignored = Tensor::full([n, 1], -100, (aligned.kind(), aligned.device()));
    Tensor::cat(&[aligned.narrow(1, 1, t - 1), ignored], 1)
}

/// Whether `labels` are in the shifted form (each label the next input token) and not the
/// aligned one: only then can the two be told apart.
fn already_shifted(labels: &Tensor, ids: &Tensor) -> bool {
    let t = ids.size()[1];
    if t < 2 {
        return false;
    }
    let learned = labels.ne(-100);
    let aligned = labels.eq_tensor(ids).logical_or(&learned.logical_not()).all().int64_value(&[]) != 0;
    if aligned {
        return false;
    }
    let (head, next) = (labels.narrow(1, 0, t - 1), ids.narrow(1, 1, t - 1));
    let next_tokens = head.eq_tensor(&next).logical_or(&head.eq(-100)).all().int64_value(&[]) != 0;
    let last_ignored = labels.narrow(1, t - 1, 1).eq(-100).all().int64_value(&[]) != 0;
    next_tokens && last_ignored && learned.any().int64_value(&[]) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> Tensor {
        Tensor::from_slice(&[5i64, 6, 7, 8, 9, 4, 3, 0]).view([2, 4])
    }

    fn field(fields: &[(String, Tensor)], name: &str) -> Vec<i64> {
        let tensor = &fields.iter().find(|(n, _)| n == name).unwrap().1;
        Vec::<i64>::try_from(tensor.reshape([-1])).unwrap()
    }

    #[test]
    fn aligned_labels_are_shifted_as_transformers_shifts_them() {
        // TRL's completion-only form: the prompt (first two tokens of row 0) is -100.
        let labels = Tensor::from_slice(&[-100i64, -100, 7, 8, 9, 4, 3, -100]).view([2, 4]);
        let mut fields = vec![("input_ids".to_owned(), ids()), ("labels".to_owned(), labels)];
        shift_for_causal_lm("data", &mut fields, Some("labels")).unwrap();
        assert_eq!(field(&fields, "labels"), [-100, 7, 8, -100, 4, 3, -100, -100]);
    }

    #[test]
    fn token_ids_alone_learn_every_real_token() {
        let mask = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 1, 1, 0]).view([2, 4]);
        let mut fields = vec![("input_ids".to_owned(), ids()), ("attention_mask".to_owned(), mask)];
        shift_for_causal_lm("data", &mut fields, None).unwrap();
        assert_eq!(field(&fields, "labels"), [6, 7, 8, -100, 4, 3, -100, -100]);
    }

    #[test]
    fn labels_shifted_beforehand_are_refused_by_name() {
        let labels = Tensor::from_slice(&[6i64, 7, 8, -100, 4, 3, 0, -100]).view([2, 4]);
        let mut fields = vec![("input_ids".to_owned(), ids()), ("label".to_owned(), labels)];
        let error = shift_for_causal_lm("train.safetensors", &mut fields, Some("label")).unwrap_err();
        assert!(error.to_string().starts_with("train.safetensors: the 'label' field holds the next token"), "{error}");
    }

    #[test]
    fn class_labels_and_feature_data_are_left_alone() {
        let mut fields = vec![("input_ids".to_owned(), ids()), ("labels".to_owned(), Tensor::from_slice(&[1i64, 0]))];
        shift_for_causal_lm("data", &mut fields, Some("labels")).unwrap();
        assert_eq!(field(&fields, "labels"), [1, 0]);
        let mut features = vec![("input".to_owned(), Tensor::zeros([2, 3], tch::kind::FLOAT_CPU))];
        shift_for_causal_lm("data", &mut features, None).unwrap();
        assert_eq!(features.len(), 1);
    }
}
