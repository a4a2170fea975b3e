//! A step's inputs, decoded and augmented ahead of time by a loader thread while the device
//! computes: `DATALOADER.PREFETCH` steps deep, on a pool of `DATALOADER.NUM_WORKERS` threads
//! (at most the machine's cores). What a step reads depends only on `(SEED, step, image slot)`
//! (see [`stream`]), so loading ahead changes no result; the step logs how long it waited.

use super::augment::{resize_exact, to_tensor, train_view};
use super::config::Config;
use super::streams::stream;
use crate::data::dataset::Dataset;
use crate::data::image::Chw;
use anyhow::{anyhow, bail, Context, Result};
use rayon::prelude::*;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

/// What loading needs of the config.
#[derive(Clone, Debug)]
pub struct Spec {
    seed: u64,
    train_size: [usize; 2],
    scale: (f64, f64),
    /// The no-DA view's size when `NOAUG.ENABLE`.
    noaug_size: Option<[usize; 2]>,
    mean: [f32; 3],
    std: [f32; 3],
}

impl Spec {
    pub fn of(cfg: &Config) -> Spec {
        Spec {
            seed: cfg.seed,
            train_size: cfg.input.train_img_size,
            scale: (cfg.input.scale_lower, cfg.input.scale_upper),
            noaug_size: cfg.noaug.enable.then_some(cfg.input.noaug_img_size),
            mean: cfg.input.pixel_mean,
            std: cfg.input.pixel_std,
        }
    }
}

/// One step's inputs.
pub struct Inputs {
    /// Augmented views, RGB bytes `n x h x w x 3` (the backend normalises them).
    pub views: Vec<u8>,
    /// Normalised no-DA tensors at `NOAUG_IMG_SIZE` (before the scales), when enabled.
    pub noaug: Option<Vec<Chw>>,
}

/// Augmented views of `idx`, the images at slots `first_slot..` of the step's batch: slot `p`
/// draws from stream `(seed, step, purpose, p)`, so a rank loading a share of the batch
/// ([`crate::dist::shard`]) draws what one rank loading all of it draws for those images.
pub fn views(
    data: &Dataset,
    spec: &Spec,
    idx: &[usize],
    first_slot: usize,
    step: usize,
    purpose: u64,
) -> Result<Vec<u8>> {
    let [h, w] = spec.train_size;
    let mut x = vec![0u8; idx.len() * 3 * h * w];
    x.par_chunks_mut(3 * h * w)
        .zip(idx.par_iter().enumerate())
        .try_for_each(|(out, (p, &i))| -> Result<()> {
            let mut rng = stream(spec.seed, step, purpose, first_slot + p);
            let img = data.image(i)?;
            let v = train_view(&img, [h, w], spec.scale, &mut rng);
            out.copy_from_slice(v.as_raw());
            Ok(())
        })?;
    Ok(x)
}

/// Normalised no-DA tensors of `idx`: resized to exactly `size` (G4).
pub fn noaug(data: &Dataset, spec: &Spec, size: [usize; 2], idx: &[usize]) -> Result<Vec<Chw>> {
    let [h, w] = size;
    idx.par_iter()
        .map(|&i| -> Result<Chw> {
            let img = resize_exact(&*data.image(i)?, h, w);
            let mut t = vec![0.0; 3 * h * w];
            to_tensor(&img, spec.mean, spec.std, &mut t);
            Ok(Chw {
                c: 3,
                h,
                w,
                data: t,
            })
        })
        .collect()
}

/// Everything step `step` reads for the images `idx` (at slots `first_slot..`).
pub fn load(
    data: &Dataset,
    spec: &Spec,
    idx: &[usize],
    first_slot: usize,
    step: usize,
    purpose: u64,
) -> Result<Inputs> {
    Ok(Inputs {
        noaug: spec
            .noaug_size
            .map(|size| noaug(data, spec, size, idx))
            .transpose()?,
        views: views(data, spec, idx, first_slot, step, purpose)?,
    })
}

/// The loader thread: it takes `(step, images)` in step order and hands back their inputs in
/// the same order.
pub struct Loader {
    jobs: Option<Sender<(usize, Vec<usize>, usize)>>,
    done: Receiver<(usize, Result<Inputs>)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Loader {
    /// Starts the thread and its pool of `workers` threads (at most the machine's cores).
    pub fn start(data: Arc<Dataset>, spec: Spec, workers: usize, purpose: u64) -> Result<Loader> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(workers.clamp(1, cores))
            .thread_name(|i| format!("insclr-loader-{i}"))
            .build()
            .context("starting the loader's threads")?;
        let (jobs, todo) = channel::<(usize, Vec<usize>, usize)>();
        let (give, done) = channel();
        let thread = std::thread::Builder::new()
            .name("insclr-loader".into())
            .spawn(move || {
                for (step, idx, first_slot) in todo {
                    let r = pool.install(|| load(&data, &spec, &idx, first_slot, step, purpose));
                    if give.send((step, r)).is_err() {
                        break;
                    }
                }
            })
            .context("starting the loader thread")?;
        Ok(Loader {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
        })
    }

    /// Queues the inputs of `step`: the images `idx` at slots `first_slot..` of its batch.
    pub fn push(&self, step: usize, idx: Vec<usize>, first_slot: usize) -> Result<()> {
        self.jobs
            .as_ref()
            .and_then(|j| j.send((step, idx, first_slot)).ok())
            .ok_or_else(|| anyhow!("the loader thread has stopped"))
    }

    /// Waits for the inputs of `step` (the oldest queued).
    pub fn next(&self, step: usize) -> Result<Inputs> {
        let (got, r) = self
            .done
            .recv()
            .map_err(|_| anyhow!("the loader thread has stopped (it panicked?)"))?;
        if got != step {
            bail!("the loader returned step {got}'s inputs for step {step}");
        }
        r.with_context(|| format!("loading the images of step {step}"))
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Closing the queue ends the thread after the load in progress.
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
