//! zstd compression of 64 KiB chunks of real executables through `osdeploy_store::compress::compress`
//! at levels 3 (the default), 10 and 19.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use osdeploy_benches::load_corpus;
use osdeploy_store::compress::compress;

const CORPUS_LEN: usize = 64 << 20;
const CHUNK_LEN: usize = 64 << 10;
/// Chunks compressed per iteration, taken at spread-out offsets of the corpus.
const CHUNKS: usize = 16;

fn compression(c: &mut Criterion) {
    let corpus = load_corpus(CORPUS_LEN);
    let stride = corpus.len() / CHUNKS;
    let chunks: Vec<&[u8]> = (0..CHUNKS).map(|i| &corpus[i * stride..i * stride + CHUNK_LEN]).collect();
    let mut group = c.benchmark_group("zstd_64KiB_chunks");
    group.throughput(Throughput::Bytes((CHUNKS * CHUNK_LEN) as u64)).sample_size(10).sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_secs(1));
    for level in [3, 10, 19] {
        let ratio: f64 =
            chunks.iter().map(|chunk| compress(chunk, level).1.len() as f64).sum::<f64>() / (CHUNKS * CHUNK_LEN) as f64;
        eprintln!("zstd level {level}: stored/raw = {ratio:.3}");
        group.measurement_time(Duration::from_secs(if level == 19 { 8 } else { 3 }));
        group.bench_with_input(BenchmarkId::new("level", level), &level, |b, &level| {
            b.iter(|| chunks.iter().map(|chunk| compress(black_box(chunk), level).1.len()).sum::<usize>())
        });
    }
    group.finish();
}

criterion_group!(benches, compression);
criterion_main!(benches);
