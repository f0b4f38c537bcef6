//! Test guest: the tagger at version 1.
const TAG: &str = "v1";
include!("../../tagger.rs");
