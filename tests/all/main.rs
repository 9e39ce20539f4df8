//! The integration tests of tvs: one binary, themed modules whose names read as sentences.
//! Every test works in its own temp directory, with real files and real usearch indexes.

mod cli;
mod contract;
mod crash_images;
mod disk_model;
mod durability;
mod embeddings;
mod faults;
mod guests;
mod http;
mod js_client;
mod langchain;
mod model_based;
mod object_storage;
mod plugins;
mod pool;
mod rates;
mod readme;
mod seaweed;
mod spin_host;
mod spin_storage;
mod spin_up;
mod store;
mod support;
mod tenants;
mod tokens;
