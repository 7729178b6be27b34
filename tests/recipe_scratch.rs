use qforge::recipe::Recipe;
#[test]
fn show() {
    for y in ["x_stage:\n  y_modifiers:\n    QuantizationModifier:\n      scheme: FP8_DYNAMIC\n      ignore: ['re:[z-a]']\n", "x_stage:\n  y_modifiers:\n    QuantizationModifier:\n      scheme: FP8_DYNAMIC\n      ignore: ['re:\\\\p{Foo}']\n"] {
        match Recipe::from_yaml(y) { Ok(r) => println!("OK:\n{}", r.to_yaml()), Err(e) => println!("ERR: {e}") }
    }
}
