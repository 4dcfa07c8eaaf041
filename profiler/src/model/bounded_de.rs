//! Deserializing untrusted input within a memory budget.
//!
//! [`Bounded`] wraps any serde deserializer and charges, while parsing, what the parsed value
//! will keep: each element of a sequence or map (its type's size), each string's bytes, and an
//! allocator's minimum per string and sequence. Past the budget the parse fails, so a small
//! crafted file (a million `[]` cost 24 bytes each in memory, 3 in the file) cannot grow the
//! result without bound. Spare capacity of vectors is not charged, so the memory actually
//! held stays under twice the budget.

use std::{cell::Cell, fmt, marker::PhantomData};

use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, Visitor};

/// What an allocation costs at least (glibc's smallest chunk), charged per string and sequence.
const ALLOCATION: u64 = 32;

/// Longest string accepted: refused before it is copied out of the parser's buffer.
pub const MAX_STRING: usize = 1 << 20;

/// Bytes a parse may still keep.
#[derive(Debug)]
pub struct Budget {
    left: Cell<u64>,
    limit: u64,
}

impl Budget {
    /// A budget of `bytes`.
    pub fn new(bytes: u64) -> Self {
        Budget {
            left: Cell::new(bytes),
            limit: bytes,
        }
    }

    /// Bytes charged so far.
    pub fn used(&self) -> u64 {
        self.limit - self.left.get()
    }

    fn charge<E: de::Error>(&self, bytes: u64) -> Result<(), E> {
        match self.left.get().checked_sub(bytes) {
            Some(left) => {
                self.left.set(left);
                Ok(())
            }
            None => Err(E::custom(format_args!(
                "it would take more than {} MiB of memory",
                self.limit >> 20
            ))),
        }
    }

    fn charge_string<E: de::Error>(&self, len: usize) -> Result<(), E> {
        if len > MAX_STRING {
            return Err(E::custom(format_args!(
                "a string of {len} bytes (at most {MAX_STRING})"
            )));
        }
        self.charge(len as u64 + ALLOCATION)
    }

    fn charge_size<T, E: de::Error>(&self) -> Result<(), E> {
        self.charge(std::mem::size_of::<T>() as u64)
    }
}

/// A deserializer whose every value is charged to a [`Budget`].
pub struct Bounded<'b, D> {
    inner: D,
    budget: &'b Budget,
}

impl<'b, D> Bounded<'b, D> {
    /// Wraps `inner`.
    pub fn new(inner: D, budget: &'b Budget) -> Self {
        Bounded { inner, budget }
    }
}

/// A visitor, seed or access wrapped to charge the same budget.
struct Charged<'b, T> {
    inner: T,
    budget: &'b Budget,
}

impl<'b, T> Charged<'b, T> {
    fn new(inner: T, budget: &'b Budget) -> Self {
        Charged { inner, budget }
    }
}

macro_rules! forward_deserialize {
    ($($method:ident),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            self.inner.$method(Charged::new(visitor, self.budget))
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Bounded<'_, D> {
    type Error = D::Error;

    forward_deserialize!(
        deserialize_any,
        deserialize_bool,
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128,
        deserialize_f32,
        deserialize_f64,
        deserialize_char,
        deserialize_str,
        deserialize_string,
        deserialize_bytes,
        deserialize_byte_buf,
        deserialize_option,
        deserialize_unit,
        deserialize_seq,
        deserialize_map,
        deserialize_ignored_any,
    );

    /// Field and variant names keep nothing: not charged.
    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.inner.deserialize_identifier(visitor)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner
            .deserialize_unit_struct(name, Charged::new(visitor, self.budget))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner
            .deserialize_newtype_struct(name, Charged::new(visitor, self.budget))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner
            .deserialize_tuple(len, Charged::new(visitor, self.budget))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner
            .deserialize_tuple_struct(name, len, Charged::new(visitor, self.budget))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner
            .deserialize_struct(name, fields, Charged::new(visitor, self.budget))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner
            .deserialize_enum(name, variants, Charged::new(visitor, self.budget))
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty)),* $(,)?) => {$(
        fn $method<E: de::Error>(self, value: $ty) -> Result<Self::Value, E> {
            self.inner.$method(value)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Charged<'_, V> {
    type Value = V::Value;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(formatter)
    }

    forward_visit!(
        visit_bool(bool),
        visit_i8(i8),
        visit_i16(i16),
        visit_i32(i32),
        visit_i64(i64),
        visit_i128(i128),
        visit_u8(u8),
        visit_u16(u16),
        visit_u32(u32),
        visit_u64(u64),
        visit_u128(u128),
        visit_f32(f32),
        visit_f64(f64),
        visit_char(char),
    );

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        self.budget.charge_string(value.len())?;
        self.inner.visit_str(value)
    }

    fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<Self::Value, E> {
        self.budget.charge_string(value.len())?;
        self.inner.visit_borrowed_str(value)
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<Self::Value, E> {
        self.budget.charge_string(value.len())?;
        self.inner.visit_string(value)
    }

    fn visit_bytes<E: de::Error>(self, value: &[u8]) -> Result<Self::Value, E> {
        self.budget.charge_string(value.len())?;
        self.inner.visit_bytes(value)
    }

    fn visit_byte_buf<E: de::Error>(self, value: Vec<u8>) -> Result<Self::Value, E> {
        self.budget.charge_string(value.len())?;
        self.inner.visit_byte_buf(value)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        self.inner
            .visit_some(Bounded::new(deserializer, self.budget))
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        self.inner
            .visit_newtype_struct(Bounded::new(deserializer, self.budget))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        self.budget.charge(ALLOCATION)?;
        self.inner.visit_seq(Charged::new(seq, self.budget))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        // Mostly structs, which allocate nothing of their own; entries are charged.
        self.inner.visit_map(Charged::new(map, self.budget))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_enum(Charged::new(data, self.budget))
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Charged<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<S::Value, D::Error> {
        self.inner
            .deserialize(Bounded::new(deserializer, self.budget))
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Charged<'_, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.budget.charge_size::<T::Value, _>()?;
        self.inner
            .next_element_seed(Charged::new(seed, self.budget))
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Charged<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.budget.charge_size::<K::Value, _>()?;
        self.inner.next_key_seed(Charged::new(seed, self.budget))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.budget.charge_size::<V::Value, _>()?;
        self.inner.next_value_seed(Charged::new(seed, self.budget))
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, 'b, A: EnumAccess<'de>> EnumAccess<'de> for Charged<'b, A> {
    type Error = A::Error;
    type Variant = Charged<'b, A::Variant>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), A::Error> {
        let budget = self.budget;
        let (value, variant) = self.inner.variant_seed(Charged::new(seed, budget))?;
        Ok((value, Charged::new(variant, budget)))
    }
}

impl<'de, A: de::VariantAccess<'de>> de::VariantAccess<'de> for Charged<'_, A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.inner
            .newtype_variant_seed(Charged::new(seed, self.budget))
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.inner
            .tuple_variant(len, Charged::new(visitor, self.budget))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.inner
            .struct_variant(fields, Charged::new(visitor, self.budget))
    }
}

/// Deserializes a `T` from `deserializer` within `budget`.
pub fn deserialize<'de, T: de::Deserialize<'de>, D: Deserializer<'de>>(
    deserializer: D,
    budget: &Budget,
) -> Result<T, D::Error> {
    PhantomData::<T>.deserialize(Bounded::new(deserializer, budget))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<T: de::DeserializeOwned>(json: &str, budget: u64) -> Result<T, serde_json::Error> {
        let budget = Budget::new(budget);
        let mut deserializer = serde_json::Deserializer::from_str(json);
        let value = deserialize(&mut deserializer, &budget)?;
        deserializer.end()?;
        Ok(value)
    }

    #[test]
    fn charges_elements_and_strings() {
        let budget = Budget::new(1 << 20);
        let mut deserializer = serde_json::Deserializer::from_str(r#"[[1,2,3],[],["abc"]]"#);
        let value: serde_json::Value = deserialize(&mut deserializer, &budget).unwrap();
        assert_eq!(value.as_array().unwrap().len(), 3);
        assert!(budget.used() > 3 * 24, "{}", budget.used());
        // A million empty lists cost a million list headers, however short the text.
        let bomb = format!("[{}[]]", "[],".repeat(1_000_000));
        let err = parse::<Vec<Vec<u64>>>(&bomb, 16 << 20).unwrap_err();
        assert!(err.to_string().contains("MiB of memory"), "{err}");
        assert_eq!(
            parse::<Vec<Vec<u64>>>(&bomb, 128 << 20).unwrap().len(),
            1_000_001
        );
        let long = format!("\"{}\"", "x".repeat(MAX_STRING + 1));
        let err = parse::<String>(&long, 1 << 30).unwrap_err();
        assert!(err.to_string().contains("a string of"), "{err}");
    }

    #[test]
    fn structs_options_and_enums_pass_through() {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        enum Kind {
            A,
            B(u32),
        }
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct S {
            name: String,
            kind: Kind,
            other: Option<Kind>,
            list: Vec<(u8, String)>,
        }
        let s: S = parse(
            r#"{"name":"n","kind":"A","other":{"B":7},"list":[[1,"x"]],"ignored":[1,2]}"#,
            1 << 20,
        )
        .unwrap();
        assert_eq!(
            s,
            S {
                name: "n".into(),
                kind: Kind::A,
                other: Some(Kind::B(7)),
                list: vec![(1, "x".into())],
            }
        );
    }
}
