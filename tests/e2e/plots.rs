//! A run's charts: output_dir/plots/*.png at the end of a run and from `host plot`.

use std::path::Path;

use crate::support::*;

/// The PNG's size and its pixels (RGB).
fn decode(path: &Path) -> (u32, u32, Vec<[u8; 3]>) {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap_or_else(|e| panic!("{} is not a PNG: {e}", path.display()));
    let mut buffer = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buffer).unwrap();
    let channels = info.color_type.samples();
    let pixels = buffer[..info.buffer_size()].chunks(channels).map(|p| [p[0], p[1], p[2]]).collect();
    (info.width, info.height, pixels)
}

#[test]
fn a_run_draws_its_curves_and_host_plot_redraws_them() {
    let dir = tempdir();
    let args = ["--max-steps", "60", "--logging-steps", "5", "--eval-strategy", "steps", "--eval-steps", "20"];
    let run = host(dir.path(), &args);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let plots = dir.path().join("output/plots");
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(plots.join("index.json")).unwrap()).unwrap();
    let charts: Vec<(&str, Vec<(&str, usize)>)> = index
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let series = c["series"].as_array().unwrap();
            let series = series.iter().map(|s| (s["name"].as_str().unwrap(), s["points"].as_array().unwrap().len()));
            (c["file"].as_str().unwrap(), series.collect())
        })
        .collect();
    // 12 training logs (every 5 of 60 steps), 3 evaluations.
    assert_eq!(
        charts,
        [
            ("loss.png", vec![("train", 12), ("eval", 3)]),
            ("grad_norm.png", vec![("grad_norm", 12)]),
            ("learning_rate.png", vec![("learning_rate", 12)]),
            ("eval_accuracy.png", vec![("eval_accuracy", 3)]),
            ("eval_f1.png", vec![("eval_f1", 3)]),
        ]
    );
    for (file, series) in &charts {
        let (width, height, pixels) = decode(&plots.join(file));
        assert_eq!((width, height), (800, 500), "{file}");
        // Each series is drawn in its colour.
        for (i, (name, _)) in series.iter().enumerate() {
            let colour = [[31, 119, 180], [255, 127, 14]][i];
            let drawn = pixels.iter().filter(|p| **p == colour).count();
            assert!(drawn > 100, "{file}: series {name} has {drawn} pixels of its colour");
        }
    }
    // `host plot` draws the same charts again, from the log history alone.
    std::fs::remove_dir_all(&plots).unwrap();
    let run = host(dir.path(), &["plot", "output"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(plots.join("loss.png").is_file() && plots.join("eval_f1.png").is_file());
    let run = host(dir.path(), &["plot", "nowhere"]);
    run.assert_clean_error(2, "nowhere has no log_history.jsonl: give the output_dir of a run");
}
