// temporary debugging aid (will be removed)
use qforge::runtime::cpu::load_cpu;
use safetensors::SafeTensors;
fn main() {
    let dir = std::env::args().nth(1).unwrap();
    let gf = std::env::args().nth(2).unwrap();
    let bytes = std::fs::read(&gf).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let f = |n: &str| -> Vec<f32> { st.tensor(n).unwrap().data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect() };
    let ids: Vec<u32> = st.tensor("input_ids").unwrap().data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32).collect();
    let mut m = load_cpu(std::path::Path::new(&dir)).unwrap();
    let (_, tr) = m.forward_trace(&ids, 0, false).unwrap();
    let h = m.config.hidden_size;
    for key in ["residual_after_attn.0", "residual_after_mlp.0", "residual_after_attn.1", "residual_after_mlp.1"] {
        let a = &tr[key]; let b = f(key);
        let mut line = String::new();
        for t in 0..ids.len() {
            let (mut md, mut mi, mut mx) = (0f32, 0usize, 0f32);
            for i in 0..h { let d = (a[t*h+i]-b[t*h+i]).abs(); if d > md { md = d; mi = i; } mx = mx.max(b[t*h+i].abs()); }
            line += &format!("t{t}:{md:.1e}@{mi}(max{mx:.0}) ");
        }
        let ne = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        println!("{key}: nonequal {ne} of {} {line}", a.len());
    }
    // layer-1 MLP on the golden input
    use qforge::runtime::cpu::{ops, linear};
    let t = ids.len();
    let x = f("residual_after_attn.1");
    let l = &m.weights.layers[1];
    let mut xn = vec![0f32; t*h];
    ops::rmsnorm(&x, &l.post_attention_norm, 1e-5, &mut xn);
    let i = m.config.intermediate_size;
    let (mut g, mut u, mut d) = (vec![0f32; t*i], vec![0f32; t*i], vec![0f32; t*h]);
    let mut sc = linear::LinearScratch::default();
    linear::forward(&l.gate_proj, &xn, t, &mut g, &mut sc);
    linear::forward(&l.up_proj, &xn, t, &mut u, &mut sc);
    ops::silu_mul(&mut g, &u);
    let tr = linear::run_linear(&l.down_proj, &g).unwrap();
    let want = f("residual_after_mlp.1");
    let mut worst = (0f32, 0, 0);
    for tt in 0..t { for j in 0..h { let v = x[tt*h+j] + tr.y[tt*h+j]; let dd = (v - want[tt*h+j]).abs(); if dd > worst.0 { worst = (dd, tt, j); } } }
    println!("mlp.1 from golden attn.1: worst {:?}", worst);
    let _ = &mut d;
    let a = &m.forward_trace(&ids, 0, false).unwrap().1["residual_after_mlp.1"];
    let mut v: Vec<(f32, usize)> = (0..h).map(|j| ((a[29*h+j]-want[29*h+j]).abs(), j)).collect();
    v.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap());
    println!("t29 top diffs: {:?}", &v[..8]);
    println!("down_proj input t29 scale {}", tr.x_scale[29]);
}
#[allow(dead_code)]
fn unused() {}
