//! The seed's order of layers, top to bottom of a graph: `wte`, then per block
//! `h.{i}.attn.{q,k,v,o}_proj` and `h.{i}.mlp.{c_fc,down_proj}`, then `output`. Other names
//! (circuit-tracer layers, a user's modules) keep their order after the names the seed knows,
//! with numeric names ("0", "1", ...) in numeric order.

const BLOCK_PARTS: [&str; 6] = [
    "attn.q_proj",
    "attn.k_proj",
    "attn.v_proj",
    "attn.o_proj",
    "mlp.c_fc",
    "mlp.down_proj",
];

/// A sort key for a layer name; ties keep their given order (sort stably).
pub fn rank(name: &str) -> (u8, u64, u64) {
    if name == "wte" {
        return (0, 0, 0);
    }
    if name == "output" {
        return (3, 0, 0);
    }
    if let Some(rest) = name.strip_prefix("h.")
        && let Some((block, part)) = rest.split_once('.')
        && let Ok(b) = block.parse::<u64>()
    {
        let p = BLOCK_PARTS
            .iter()
            .position(|&x| x == part)
            .map_or(BLOCK_PARTS.len() as u64, |p| p as u64);
        return (1, b, p);
    }
    if let Ok(n) = name.parse::<u64>() {
        return (1, n, 0);
    }
    if let Some(rest) = name.strip_prefix("error.")
        && let Ok(n) = rest.parse::<u64>()
    {
        return (1, n, 1);
    }
    (2, 0, 0)
}

/// `names` sorted into display order (stable).
pub fn ordered(mut names: Vec<String>) -> Vec<String> {
    names.sort_by_key(|n| rank(n));
    names
}
