//! FastCDC chunking throughput of `Chunker::split` over 64 MiB of real executables (one group per
//! parameter set), and blake3 hashing of 64 KiB chunks.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use osdeploy_benches::{load_corpus, param_sets, params_label};
use osdeploy_store::chunker::Chunker;

const CORPUS_LEN: usize = 64 << 20;
const CHUNK_LEN: usize = 64 << 10;
/// Chunks hashed per iteration, taken at spread-out offsets of the corpus.
const CHUNKS: usize = 16;

fn chunking(c: &mut Criterion) {
    let corpus = load_corpus(CORPUS_LEN);
    let mut group = c.benchmark_group("chunker_split_64MiB");
    group.throughput(Throughput::Bytes(corpus.len() as u64)).sample_size(10).sampling_mode(SamplingMode::Flat);
    group.measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    for params in param_sets() {
        let chunker = Chunker::new(params);
        group.bench_function(params_label(&params), |b| {
            b.iter(|| {
                let mut chunks = 0u64;
                chunker
                    .split(corpus.as_slice(), Path::new("corpus"), |chunk| {
                        black_box(chunk);
                        chunks += 1;
                        Ok(())
                    })
                    .expect("in-memory chunking cannot fail");
                chunks
            })
        });
    }
    group.finish();
}

fn hashing(c: &mut Criterion) {
    let corpus = load_corpus(CORPUS_LEN);
    let stride = corpus.len() / CHUNKS;
    let chunks: Vec<&[u8]> = (0..CHUNKS).map(|i| &corpus[i * stride..i * stride + CHUNK_LEN]).collect();
    let mut group = c.benchmark_group("blake3");
    group.throughput(Throughput::Bytes((CHUNKS * CHUNK_LEN) as u64)).sample_size(20);
    group.measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    group.bench_function("hash_64KiB_chunks", |b| {
        b.iter(|| chunks.iter().map(|chunk| blake3::hash(black_box(chunk)).as_bytes()[0]).fold(0u8, |a, x| a ^ x))
    });
    group.finish();
}

criterion_group!(benches, chunking, hashing);
criterion_main!(benches);
