//! Generated code for the `payments.v1` API (CONTRACT §2), and nothing else.
//!
//! The code is produced at build time from `proto/payments/v1/coordinator.proto` by `protox` and
//! `tonic-prost-build`; no hand-written logic belongs in this crate.

#![allow(clippy::all, missing_docs)]

pub mod payments {
    pub mod v1 {
        tonic::include_proto!("payments.v1");

        /// The encoded `FileDescriptorSet`, for gRPC server reflection.
        pub const FILE_DESCRIPTOR_SET: &[u8] =
            tonic::include_file_descriptor_set!("payments_v1_descriptor");
    }
}

pub use payments::v1;
