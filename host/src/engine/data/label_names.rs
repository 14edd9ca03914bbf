//! Class labels given by name ("negative", "positive") rather than by id, as `datasets`
//! users have them before `class_encode_column`: the names sorted, each the id of its
//! place (as `class_encode_column` numbers them), and the names kept for the model's
//! `id2label`. The evaluation data's names are numbered as the training data's.

use crate::error::InputError;

/// A label as a file holds it.
#[derive(Debug, Clone, PartialEq)]
pub enum RawLabel {
    Id(i64),
    Name(String),
}

/// Ids for `raw` (in file order), and the names where the labels are names. `place(i)`
/// names example i in errors.
pub fn encode(
    raw: Vec<RawLabel>,
    source: &str,
    place: impl Fn(usize) -> String,
) -> Result<(Vec<i64>, Option<Vec<String>>), InputError> {
    let named = matches!(raw.first(), Some(RawLabel::Name(_)));
    if let Some(odd) = raw.iter().position(|l| matches!(l, RawLabel::Name(_)) != named) {
        let (what, others) = if named { ("a class id", "names") } else { ("a name", "class ids") };
        return Err(InputError::new(format!(
            "{source} {}: the label is {what} where the first labels are {others}; give every label as a class id or every label as a name",
            place(odd)
        )));
    }
    if !named {
        return Ok((raw.into_iter().map(|l| if let RawLabel::Id(id) = l { id } else { 0 }).collect(), None));
    }
    let names: Vec<String> =
        raw.into_iter().map(|l| if let RawLabel::Name(n) = l { n } else { String::new() }).collect();
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    let ids = names.iter().map(|n| sorted.binary_search(n).unwrap_or(0) as i64).collect();
    Ok((ids, Some(sorted)))
}

/// The ids of `eval`'s labels renumbered by the training data's names (`train`, in id
/// order), where both name their labels; an evaluation label the training data lacks is
/// an error.
pub fn renumber(
    eval_names: &[String],
    eval_ids: &[i64],
    train: &[String],
    source: &str,
) -> Result<Vec<i64>, InputError> {
    let map: Vec<i64> = eval_names
        .iter()
        .map(|name| {
            // By place, not by search: a ClassLabel's names keep their own order.
            train.iter().position(|n| n == name).map(|i| i as i64).ok_or_else(|| {
                InputError::new(format!(
                    "{source}: label '{name}' does not occur in the training data (its labels: {}); give evaluation data with the training data's labels",
                    train.join(", ")
                ))
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(eval_ids.iter().map(|&id| map[id as usize]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<RawLabel> {
        list.iter().map(|n| RawLabel::Name((*n).to_owned())).collect()
    }

    #[test]
    fn names_are_numbered_in_sorted_order_as_class_encode_column_does() {
        let (ids, found) = encode(names(&["pos", "neg", "neutral", "neg"]), "f", |i| format!("line {i}")).unwrap();
        assert_eq!(ids, [2, 0, 1, 0]);
        assert_eq!(found.unwrap(), ["neg", "neutral", "pos"]);
        let (ids, found) = encode(vec![RawLabel::Id(2), RawLabel::Id(0)], "f", |i| format!("line {i}")).unwrap();
        assert_eq!((ids, found), (vec![2, 0], None));
        let mixed = encode(vec![RawLabel::Name("a".into()), RawLabel::Id(1)], "f.jsonl", |i| format!("line {}", i + 1));
        assert_eq!(
            mixed.unwrap_err().to_string(),
            "f.jsonl line 2: the label is a class id where the first labels are names; give every label as a class id or every label as a name"
        );
    }

    #[test]
    fn evaluation_names_take_the_training_numbers() {
        let train = vec!["neg".to_owned(), "neutral".to_owned(), "pos".to_owned()];
        let eval_names = vec!["neg".to_owned(), "pos".to_owned()];
        assert_eq!(renumber(&eval_names, &[1, 0, 1], &train, "e").unwrap(), [2, 0, 2]);
        let unknown = renumber(&["meh".to_owned()], &[0], &train, "e.jsonl").unwrap_err().to_string();
        assert!(unknown
            .starts_with("e.jsonl: label 'meh' does not occur in the training data (its labels: neg, neutral, pos)"));
    }
}
