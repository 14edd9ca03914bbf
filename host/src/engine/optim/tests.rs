//! Each optimizer against its reference (tests/fixtures/optimizers.json, made by
//! scripts/fixtures/optimizer_reference.py with the venv's PyTorch and transformers).

use tch::{Kind, Tensor};

use super::*;

fn tensor(value: &serde_json::Value) -> Tensor {
    match value.as_array() {
        Some(rows) if rows.first().is_some_and(|r| r.is_array()) => {
            let rows: Vec<Tensor> = rows.iter().map(tensor).collect();
            Tensor::stack(&rows, 0)
        }
        _ => {
            let values: Vec<f32> = serde_json::from_value(value.clone()).unwrap();
            Tensor::from_slice(&values)
        }
    }
}

/// Makes `grad` the gradient of `param`.
fn set_grad(param: &Tensor, grad: &Tensor) {
    let mut current = param.grad();
    if current.defined() {
        let _ = current.zero_();
    }
    (param * grad).sum(Kind::Float).backward();
}

#[test]
fn optimizers_match_their_references() {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("../../../../tests/fixtures/optimizers.json")).unwrap();
    let adam = AdamSettings { beta1: 0.9, beta2: 0.999, eps: 1e-8 };
    for case in fixture["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let weight = tensor(&case["weight"]).set_requires_grad(true);
        let bias = tensor(&case["bias"]).set_requires_grad(true);
        let decay = case["weight_decay"].as_f64().unwrap();
        let params = vec![
            Param { name: "layer.weight".into(), tensor: weight.shallow_clone(), weight_decay: decay },
            Param { name: "layer.bias".into(), tensor: bias.shallow_clone(), weight_decay: 0.0 },
        ];
        let mut optimizer = build(
            &OptimizerSpec::parse(case["optim"].as_str().unwrap(), case["optim_args"].as_str().unwrap(), adam).unwrap(),
            params,
        );
        let lrs = case["lrs"].as_array().unwrap();
        for (step, (grads, expected)) in
            case["grads"].as_array().unwrap().iter().zip(case["expected"].as_array().unwrap()).enumerate()
        {
            set_grad(&weight, &tensor(&grads["weight"]));
            set_grad(&bias, &tensor(&grads["bias"]));
            optimizer.step(lrs[step].as_f64().unwrap()).unwrap();
            for (label, got, want) in [("weight", &weight, &expected["weight"]), ("bias", &bias, &expected["bias"])] {
                let diff = (got.detach() - tensor(want)).abs().max().double_value(&[]);
                assert!(diff <= 1e-6, "{name}: {label} differs by {diff} after step {}", step + 1);
            }
        }
    }
}

#[test]
fn weight_decay_skips_biases_and_norms_as_hf() {
    assert!(decays("layers.0.weight"));
    assert!(!decays("layers.0.bias"));
    assert!(!decays("encoder.layernorm.weight"));
    assert!(!decays("blocks.1.norm.weight"));
    assert!(!decays("blocks.1.attn_norm.weight"));
    assert!(decays("normalizer.weight"));
}

#[test]
fn bad_optimizer_settings_are_clear_errors() {
    let adam = AdamSettings { beta1: 0.9, beta2: 0.999, eps: 1e-8 };
    let err = |optim: &str, args: &str| OptimizerSpec::parse(optim, args, adam).err().unwrap().to_string();
    assert_eq!(
        err("adamm", ""),
        "optim 'adamm' is not one of: adamw (or adamw_torch), adam, sgd, rmsprop, adagrad, lion, adafactor"
    );
    assert_eq!(
        err("sgd", "momentun=0.9"),
        "optim_args: 'momentun' is not a setting of sgd (it takes: momentum, dampening, nesterov)"
    );
    assert_eq!(err("sgd", "momentum=fast"), "optim_args: momentum=fast is not a number");
    assert_eq!(
        err("sgd", "momentum"),
        "optim_args 'momentum': 'momentum' is not key=value (e.g. momentum=0.9,nesterov=true)"
    );
    assert_eq!(err("sgd", "nesterov=true"), "optim_args: nesterov needs momentum > 0 and dampening 0");
}

#[test]
fn state_round_trips_mid_trajectory_for_every_optimizer() {
    let _generator = crate::engine::rng::lock_generator();
    // Two steps, save, a fresh optimizer loads the state, three more steps: the same as five
    // steps straight, bit for bit.
    let adam = AdamSettings { beta1: 0.9, beta2: 0.999, eps: 1e-8 };
    for (optim, args) in [
        ("adamw", "amsgrad=true"),
        ("adam", ""),
        ("sgd", "momentum=0.9"),
        ("rmsprop", "centered=true,momentum=0.5"),
        ("adagrad", ""),
        ("lion", ""),
        ("adafactor", "beta1=0.9"),
    ] {
        tch::manual_seed(11);
        let init_w = Tensor::randn([3, 4], (Kind::Float, tch::Device::Cpu));
        let init_b = Tensor::randn([4], (Kind::Float, tch::Device::Cpu));
        let grads: Vec<(Tensor, Tensor)> = (0..5)
            .map(|_| {
                (
                    Tensor::randn([3, 4], (Kind::Float, tch::Device::Cpu)),
                    Tensor::randn([4], (Kind::Float, tch::Device::Cpu)),
                )
            })
            .collect();
        let fresh = || {
            let w = init_w.copy().set_requires_grad(true);
            let b = init_b.copy().set_requires_grad(true);
            let params = vec![
                Param { name: "w".into(), tensor: w.shallow_clone(), weight_decay: 0.1 },
                Param { name: "b".into(), tensor: b.shallow_clone(), weight_decay: 0.0 },
            ];
            (w, b, build(&OptimizerSpec::parse(optim, args, adam).unwrap(), params))
        };
        let run = |w: &Tensor, b: &Tensor, opt: &mut Box<dyn Optimizer>, steps: std::ops::Range<usize>| {
            for i in steps {
                set_grad(w, &grads[i].0);
                set_grad(b, &grads[i].1);
                opt.step(0.01).unwrap();
            }
        };
        let (w1, b1, mut straight) = fresh();
        run(&w1, &b1, &mut straight, 0..5);

        let (w2, b2, mut first) = fresh();
        run(&w2, &b2, &mut first, 0..2);
        let saved = first.state().unwrap();
        let (w3, b3, mut resumed) = fresh();
        tch::no_grad(|| {
            w3.shallow_clone().copy_(&w2);
            b3.shallow_clone().copy_(&b2);
        });
        resumed.load_state(&saved).unwrap();
        run(&w3, &b3, &mut resumed, 2..5);
        assert!(w1.equal(&w3) && b1.equal(&b3), "{optim}: resumed trajectory differs");
    }
}

#[test]
fn fused_adamw_skips_a_flagged_step_on_the_device_and_others_cannot() {
    let _generator = crate::engine::rng::lock_generator();
    tch::manual_seed(5);
    let init = Tensor::randn([3, 4], (Kind::Float, tch::Device::Cpu));
    let grads: Vec<Tensor> = (0..3).map(|_| Tensor::randn([3, 4], (Kind::Float, tch::Device::Cpu))).collect();
    let adam = AdamSettings { beta1: 0.9, beta2: 0.999, eps: 1e-8 };
    let fresh = |optim: &str| {
        let w = init.copy().set_requires_grad(true);
        let params = vec![Param { name: "w".into(), tensor: w.shallow_clone(), weight_decay: 0.1 }];
        (w, build(&OptimizerSpec::parse(optim, "", adam).unwrap(), params))
    };
    let (skip, take) = (Tensor::from(1.0f32), Tensor::from(0.0f32));
    // Steps 1 and 3 taken, step 2 flagged: the same weights, moments and step count as
    // two plain steps with the first and third gradients.
    let (w1, mut flagged) = fresh("adamw");
    for (grad, flag) in grads.iter().zip([&take, &skip, &take]) {
        set_grad(&w1, grad);
        assert!(flagged.step_unless(0.01, flag).unwrap());
    }
    let (w2, mut plain) = fresh("adamw");
    for grad in [&grads[0], &grads[2]] {
        set_grad(&w2, grad);
        plain.step(0.01).unwrap();
    }
    assert!(w1.equal(&w2), "a flagged step changed the weights");
    let (a, b) = (flagged.state().unwrap(), plain.state().unwrap());
    assert_eq!(a.scalars, serde_json::json!({ "step": 2 }));
    assert_eq!(a.scalars, b.scalars);
    for ((name, x), (_, y)) in a.tensors.iter().zip(&b.tensors) {
        assert!(x.equal(y), "{name} differs");
    }
    // Optimizers without a device-side skip say so and change nothing.
    let (w3, mut sgd) = fresh("sgd");
    set_grad(&w3, &grads[0]);
    assert!(!sgd.step_unless(0.01, &take).unwrap());
    assert!(w3.equal(&init));
}
